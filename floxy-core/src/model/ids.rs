//! Identifiers and time.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Name of a step inside a definition. Cheap to clone (shared string).
pub type StepName = Arc<str>;

/// Identifier of a workflow instance. Chosen by the caller of the core (the runtime uses
/// time-ordered `UUIDv7s`) so that no store round trip is needed to start an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub uuid::Uuid);

impl InstanceId {
    /// Builds an id from a 128-bit value (tests and simulations use counters).
    #[must_use]
    pub const fn from_u128(v: u128) -> Self {
        Self(uuid::Uuid::from_u128(v))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for InstanceId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

/// Identifier of a workflow definition: `"<name>-v<version>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkflowId(pub Arc<str>);

impl WorkflowId {
    /// Builds the id of `name` at `version`.
    #[must_use]
    pub fn new(name: &str, version: u32) -> Self {
        Self(format!("{name}-v{version}").into())
    }
    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for WorkflowId {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

/// Identifier of a dead-letter record, assigned by the store when the record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DlqId(pub u64);

impl fmt::Display for DlqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A fencing token: strictly increasing across all claims of one store. Every write that
/// follows a claim carries it; a write with a token that is no longer current is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A point in time: milliseconds since the Unix epoch. The core never reads a clock; every
/// function that needs the time takes a `Timestamp` argument.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the epoch.
    #[must_use]
    pub const fn as_millis(self) -> i64 {
        self.0
    }
    /// This time plus `ms` milliseconds (saturating).
    #[must_use]
    pub const fn add_ms(self, ms: u64) -> Self {
        // `ms <= i64::MAX` in the else branch, so the cast is exact.
        let ms = if ms > i64::MAX.cast_unsigned() {
            i64::MAX
        } else {
            ms.cast_signed()
        };
        Self(self.0.saturating_add(ms))
    }
    /// Milliseconds elapsed from `earlier` to `self` (0 if `earlier` is later).
    #[must_use]
    pub const fn since(self, earlier: Timestamp) -> u64 {
        let d = self.0.saturating_sub(earlier.0);
        // `d >= 0` in the else branch, so the cast is exact.
        if d < 0 { 0 } else { d.cast_unsigned() }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
