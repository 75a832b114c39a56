//! Bearer tokens with roles: [`Tokens`], [`Role`], and the caller of a request.

use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Name of the environment variable [`Tokens::from_env`] reads.
pub const TOKENS_ENV: &str = "FLOXY_HTTP_TOKENS";

/// What a token may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// Reads (payloads redacted unless the token has `see_payloads`).
    Viewer,
    /// Reads, and start, cancel, abort, decide, requeue.
    Operator,
    /// Everything: also registering flows and cleanup.
    Admin,
}

impl Role {
    /// The lower-case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// One configured token: its owner's name, role, and the SHA-256 of the secret (never the
/// secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct TokenEntry {
    /// Who holds it: recorded in the events of the operator actions it makes.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
    /// Whether payloads (inputs, outputs, decisions, DLQ inputs) are shown to it.
    /// Operators and admins see them by default; viewers do not.
    #[serde(default)]
    pub see_payloads: Option<bool>,
}

impl TokenEntry {
    /// An entry for the token whose SHA-256 is `sha256` (hex).
    ///
    /// # Errors
    /// [`TokenError::Invalid`] when `sha256` is not 64 hex digits or `name` is empty.
    pub fn new(
        name: impl Into<String>,
        role: Role,
        sha256: impl Into<String>,
    ) -> Result<Self, TokenError> {
        let e = Self {
            name: name.into(),
            role,
            sha256: sha256.into().to_ascii_lowercase(),
            see_payloads: None,
        };
        e.check()?;
        Ok(e)
    }

    /// Sets whether payloads are shown to this token.
    #[must_use]
    pub fn see_payloads(mut self, see: bool) -> Self {
        self.see_payloads = Some(see);
        self
    }

    fn check(&self) -> Result<(), TokenError> {
        if self.name.trim().is_empty() {
            return Err(TokenError::Invalid("a token has an empty name".into()));
        }
        let ok = self.sha256.len() == 64 && self.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(TokenError::Invalid(format!(
                "token {:?}: sha256 must be 64 hex digits",
                self.name
            )));
        }
        Ok(())
    }

    fn digest(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Checked in `check`: 64 hex digits.
        if hex::decode_to_slice(&self.sha256, &mut out).is_err() {
            out = [0u8; 32];
        }
        out
    }
}

/// Errors of loading [`Tokens`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line, entry or field is malformed (the message says where).
    #[error("invalid token configuration: {0}")]
    Invalid(String),
}

/// The configured tokens (hashed). Compared in constant time.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<(TokenEntry, [u8; 32])>,
}

/// The SHA-256 of `token`, as lower-case hex: what a token file stores.
#[must_use]
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tokens {
    /// No tokens.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens from entries.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] for a malformed entry or a name used twice.
    pub fn from_entries(entries: impl IntoIterator<Item = TokenEntry>) -> Result<Self, TokenError> {
        let mut out = Self::default();
        for e in entries {
            out.push(e)?;
        }
        Ok(out)
    }

    /// Adds an entry.
    ///
    /// # Errors
    /// As [`Tokens::from_entries`].
    pub fn push(&mut self, mut entry: TokenEntry) -> Result<(), TokenError> {
        entry.sha256 = entry.sha256.to_ascii_lowercase();
        entry.check()?;
        if self.entries.iter().any(|(e, _)| e.name == entry.name) {
            return Err(TokenError::Invalid(format!(
                "token name {:?} used twice",
                entry.name
            )));
        }
        let d = entry.digest();
        self.entries.push((entry, d));
        Ok(())
    }

    /// The configured entries, in the order they were added.
    pub fn entries(&self) -> impl Iterator<Item = &TokenEntry> {
        self.entries.iter().map(|(e, _)| e)
    }

    /// Whether no token is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many tokens are configured.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Parses a token file: a JSON array of `{"name", "role", "sha256", "see_payloads"?}`
    /// objects, or lines `name role sha256 [see_payloads]` (blank lines and `#` comments
    /// ignored).
    ///
    /// # Errors
    /// [`TokenError::Invalid`] naming the line or entry.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let trimmed = text.trim_start();
        if trimmed.starts_with('[') {
            let entries: Vec<TokenEntry> = serde_json::from_str(text)
                .map_err(|e| TokenError::Invalid(format!("JSON token list: {e}")))?;
            return Self::from_entries(entries);
        }
        let mut out = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let bad = |why: &str| TokenError::Invalid(format!("line {}: {why}", i + 1));
            let (name, role, sha, extra) = match fields.as_slice() {
                [n, r, s] => (*n, *r, *s, None),
                [n, r, s, x] => (*n, *r, *s, Some(*x)),
                _ => return Err(bad("expected `name role sha256 [see_payloads]`")),
            };
            let role = Role::parse(role).ok_or_else(|| bad("role is viewer, operator or admin"))?;
            let mut entry = TokenEntry::new(name, role, sha).map_err(|e| bad(&e.to_string()))?;
            match extra {
                None => {}
                Some("see_payloads") => entry = entry.see_payloads(true),
                Some(_) => return Err(bad("the fourth field can only be `see_payloads`")),
            }
            out.push(entry).map_err(|e| bad(&e.to_string()))?;
        }
        Ok(out)
    }

    /// Reads a token file ([`Tokens::parse`]).
    ///
    /// # Errors
    /// [`TokenError::Io`], [`TokenError::Invalid`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Reads tokens from the environment variable [`TOKENS_ENV`] in the format of
    /// [`Tokens::parse`] (lines may be separated by `;` as well). Unset: no tokens.
    ///
    /// # Errors
    /// [`TokenError::Invalid`].
    pub fn from_env() -> Result<Self, TokenError> {
        match std::env::var(TOKENS_ENV) {
            Ok(v) if v.trim_start().starts_with('[') => Self::parse(&v),
            Ok(v) => Self::parse(&v.replace(';', "\n")),
            Err(_) => Ok(Self::default()),
        }
    }

    /// The entry of `token`, comparing its hash with every entry in constant time.
    #[must_use]
    pub fn check(&self, token: &str) -> Option<&TokenEntry> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (e, d) in &self.entries {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        found
    }
}

/// Who makes a request, established from its bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) name: Arc<str>,
    pub(crate) role: Role,
    pub(crate) see_payloads: bool,
}

impl Caller {
    pub(crate) fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token {:?} has role {}; this needs {}",
                self.name,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }
}

impl FromRequestParts<crate::AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION);
        let Some(header) = header else {
            if state.config.insecure_local && state.config.tokens.is_empty() {
                return Ok(Self {
                    name: "local".into(),
                    role: Role::Admin,
                    see_payloads: true,
                });
            }
            return Err(ApiError::Unauthorized("missing bearer token".into()));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized("expected `Authorization: Bearer <token>`".into())
            })?;
        Self::of_token(state, token)
    }
}

impl Caller {
    /// The caller holding `token` (for the event stream's `access_token` query parameter:
    /// `EventSource` cannot send headers).
    pub(crate) fn of_token(state: &crate::AppState, token: &str) -> Result<Self, ApiError> {
        let entry = state
            .config
            .tokens
            .check(token)
            .ok_or_else(|| ApiError::Unauthorized("unknown token".into()))?;
        Ok(Self {
            name: entry.name.as_str().into(),
            role: entry.role,
            see_payloads: entry.see_payloads.unwrap_or(entry.role >= Role::Operator),
        })
    }
}
