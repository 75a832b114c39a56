//! Failpoints: arming the runtime's (and stores') named crash points.
//!
//! The names are [`floxy_core::failpoints`]; what `return(..)` means at each point is
//! documented there. Arming needs the `failpoints` feature of this crate (which turns on
//! `floxy/failpoints`); without it [`arm`] reports [`FailpointError::Disabled`].
//!
//! The fail registry is process-global: arm failpoints in a process (or test target) of
//! their own. A [`FailpointGuard`] disarms what it armed when dropped.

pub use floxy_core::failpoints::{
    AFTER_CLAIM, AFTER_COMMIT, ALL, BEFORE_COMMIT, HEARTBEAT, INSIDE_COMMIT, RUNTIME,
};
use serde::{Deserialize, Serialize};

/// One failpoint setting: a name and a fail-rs action string such as `"3%return"` or
/// `"1%return(exit)"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailpointSpec {
    /// Failpoint name (one of [`ALL`], or a store's own).
    pub name: String,
    /// fail-rs action string.
    pub actions: String,
}

impl FailpointSpec {
    /// Parses `NAME=ACTIONS`.
    ///
    /// # Errors
    /// No `=` in the text.
    pub fn parse(s: &str) -> Result<Self, FailpointError> {
        let (name, actions) = s
            .split_once('=')
            .ok_or_else(|| FailpointError::Config(format!("expected NAME=ACTIONS, got {s:?}")))?;
        Ok(Self {
            name: name.trim().to_owned(),
            actions: actions.trim().to_owned(),
        })
    }

    /// The chaos profile: 2 % simulated crashes at each runtime point, 2 % skipped
    /// heartbeats, and 2 % lost commit acknowledgements inside the stores that evaluate
    /// [`INSIDE_COMMIT`].
    #[must_use]
    pub fn crash_profile() -> Vec<Self> {
        let mut v: Vec<Self> = RUNTIME
            .iter()
            .map(|n| Self {
                name: (*n).to_owned(),
                actions: "2%return".to_owned(),
            })
            .collect();
        v.push(Self {
            name: INSIDE_COMMIT.to_owned(),
            actions: "2%return(applied)".to_owned(),
        });
        v
    }
}

/// Errors arming failpoints.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FailpointError {
    /// Built without the `failpoints` feature.
    #[error("floxy-chaos was built without the `failpoints` feature")]
    Disabled,
    /// fail-rs refused the action string.
    #[error("bad failpoint configuration: {0}")]
    Config(String),
}

/// Disarms the failpoints it armed when dropped (or by [`FailpointGuard::disarm`]).
#[derive(Debug, Default)]
#[must_use = "dropping the guard disarms the failpoints"]
pub struct FailpointGuard {
    names: Vec<String>,
}

impl FailpointGuard {
    /// Disarms now.
    pub fn disarm(&mut self) {
        #[cfg(feature = "failpoints")]
        for n in self.names.drain(..) {
            fail::remove(n);
        }
        #[cfg(not(feature = "failpoints"))]
        self.names.clear();
    }

    /// Names armed by this guard.
    #[must_use]
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for FailpointGuard {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Whether this build can arm failpoints.
#[must_use]
pub const fn available() -> bool {
    cfg!(feature = "failpoints")
}

/// Arms every spec (process-global), returning a guard that disarms them.
///
/// # Errors
/// [`FailpointError::Disabled`] without the feature (unless `specs` is empty);
/// [`FailpointError::Config`] for a bad action string (what was armed before is disarmed).
pub fn arm(specs: &[FailpointSpec]) -> Result<FailpointGuard, FailpointError> {
    let mut guard = FailpointGuard::default();
    if specs.is_empty() {
        return Ok(guard);
    }
    #[cfg(feature = "failpoints")]
    for s in specs {
        fail::cfg(s.name.clone(), &s.actions).map_err(FailpointError::Config)?;
        guard.names.push(s.name.clone());
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = &mut guard;
        return Err(FailpointError::Disabled);
    }
    #[allow(unreachable_code)]
    Ok(guard)
}
