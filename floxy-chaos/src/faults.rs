//! Fault bookkeeping shared by every injector: an on/off switch and counters by kind.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Turns a group of injectors on and off at once. A run arms it for its fault phase and
/// disarms it before the settle phase, so every instance can finish on a healthy system.
/// Cheap to clone; clones share the state.
#[derive(Debug, Clone)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    /// A switch that starts armed (`true`) or disarmed.
    #[must_use]
    pub fn new(armed: bool) -> Self {
        Self(Arc::new(AtomicBool::new(armed)))
    }
    /// Whether injectors behind this switch fire.
    #[must_use]
    pub fn is_armed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// Arms or disarms.
    pub fn set(&self, armed: bool) {
        self.0.store(armed, Ordering::Relaxed);
    }
}

impl Default for FaultSwitch {
    fn default() -> Self {
        Self::new(true)
    }
}

/// Counts of injected faults by kind (`"handler.panic"`, `"store.error"`, ...). Cheap to
/// clone; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct FaultCounters(Arc<Mutex<BTreeMap<String, u64>>>);

impl FaultCounters {
    /// Adds one fault of `kind`.
    pub fn add(&self, kind: &str) {
        self.add_n(kind, 1);
    }
    /// Adds `n` faults of `kind`.
    pub fn add_n(&self, kind: &str, n: u64) {
        let mut m = self.0.lock();
        match m.get_mut(kind) {
            Some(v) => *v += n,
            None => {
                m.insert(kind.to_owned(), n);
            }
        }
    }
    /// The count of `kind`.
    #[must_use]
    pub fn get(&self, kind: &str) -> u64 {
        self.0.lock().get(kind).copied().unwrap_or(0)
    }
    /// All counts, by kind.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().clone()
    }
    /// The sum over every kind.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.0.lock().values().sum()
    }
}
