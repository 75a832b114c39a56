//! The ledger: where workload handlers write their side effects, so the end state can be
//! audited.
//!
//! Every forward handler of a workload step with an effect *applies* an amount under the
//! step run's idempotency key, and its compensation *reverses* it. The ledger behaves like a
//! careful downstream system: applying the same key twice counts once (at-least-once
//! delivery is absorbed), and a reversal is a tombstone (an apply arriving after the reversal,
//! e.g. from a zombie worker, is ignored and counted). So the state is independent of the
//! order in which entries arrive, and the files of several processes can be merged.
//!
//! The ledger also counts handler calls per step run and kind, for the
//! `calls <= max_retries + 1` invariant.
//!
//! A ledger can mirror every entry to an append-only JSON-lines file, so worker processes that
//! are killed with SIGKILL leave their effects behind for the controller to audit.

use floxy::{InstanceId, WorkKind};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;

/// A step run: `(instance, step)`.
pub type RunKey = (InstanceId, String);

/// The effect of one step run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// Amount applied by the forward handler.
    pub amount: i64,
    /// Apply calls seen (duplicates included).
    pub applies: u32,
    /// Reverse calls seen (duplicates included).
    pub reversals: u32,
    /// Apply calls that arrived after the reversal (ignored).
    pub late_applies: u32,
    /// Whether the effect was applied.
    pub applied: bool,
    /// Whether the effect was reversed (tombstone).
    pub reversed: bool,
}

impl Effect {
    /// The net amount this step run leaves in the ledger.
    #[must_use]
    pub fn net(&self) -> i64 {
        if self.applied && !self.reversed {
            self.amount
        } else {
            0
        }
    }
}

/// One line of a ledger file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    Call {
        i: InstanceId,
        s: String,
        k: WorkKind,
        a: u32,
    },
    Apply {
        i: InstanceId,
        s: String,
        amount: i64,
    },
    Reverse {
        i: InstanceId,
        s: String,
    },
}

#[derive(Debug, Default)]
struct State {
    calls: HashMap<(InstanceId, String, WorkKind), u32>,
    max_attempt: HashMap<(InstanceId, String, WorkKind), u32>,
    effects: HashMap<RunKey, Effect>,
    total_calls: u64,
    retries: u64,
    /// Totals of the entries dropped by [`Ledger::forget`].
    forgotten: LedgerTotals,
    /// Instances forgotten recently (two generations, see [`Ledger::rotate_forgotten`]).
    gone: [HashSet<InstanceId>; 2],
}

/// The ledger. Cheap operations under one mutex; optionally mirrored to a file.
#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<State>,
    file: Option<Mutex<std::fs::File>>,
}

impl Ledger {
    /// An in-memory ledger.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger that also appends every entry to `path` (created if missing).
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn with_file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            state: Mutex::default(),
            file: Some(Mutex::new(f)),
        })
    }

    fn write(&self, line: &Line) {
        if let Some(f) = &self.file
            && let Ok(mut s) = serde_json::to_string(line)
        {
            s.push('\n');
            // One write(2) of a short line to an O_APPEND file: whole lines, even across
            // processes. An error only loses audit data; it is logged.
            if let Err(e) = f.lock().write_all(s.as_bytes()) {
                tracing::warn!(error = %e, "ledger file write failed");
            }
        }
    }

    fn apply_line(st: &mut State, line: Line) {
        let instance = match &line {
            Line::Call { i, .. } | Line::Apply { i, .. } | Line::Reverse { i, .. } => *i,
        };
        if st.gone.iter().any(|g| g.contains(&instance)) {
            st.forgotten.after_forget += 1;
            return;
        }
        match line {
            Line::Call { i, s, k, a } => {
                st.total_calls += 1;
                if a > 1 {
                    st.retries += 1;
                }
                let key = (i, s, k);
                let m = st.max_attempt.entry(key.clone()).or_default();
                *m = (*m).max(a);
                *st.calls.entry(key).or_default() += 1;
            }
            Line::Apply { i, s, amount } => {
                let e = st.effects.entry((i, s)).or_default();
                e.applies += 1;
                if e.reversed {
                    e.late_applies += 1;
                } else {
                    e.applied = true;
                    e.amount = amount;
                }
            }
            Line::Reverse { i, s } => {
                let e = st.effects.entry((i, s)).or_default();
                e.reversals += 1;
                e.reversed = true;
            }
        }
    }

    fn record(&self, line: Line) {
        self.write(&line);
        Self::apply_line(&mut self.state.lock(), line);
    }

    /// Records a handler call (attempt numbers start at 1).
    pub fn record_call(&self, instance: InstanceId, step: &str, kind: WorkKind, attempt: u32) {
        self.record(Line::Call {
            i: instance,
            s: step.to_owned(),
            k: kind,
            a: attempt,
        });
    }

    /// Applies the effect of a step run (idempotent per step run).
    pub fn apply(&self, instance: InstanceId, step: &str, amount: i64) {
        self.record(Line::Apply {
            i: instance,
            s: step.to_owned(),
            amount,
        });
    }

    /// Reverses the effect of a step run (a tombstone; a no-op if it was never applied).
    pub fn reverse(&self, instance: InstanceId, step: &str) {
        self.record(Line::Reverse {
            i: instance,
            s: step.to_owned(),
        });
    }

    /// Merges the entries of a ledger file (written by another process). Unreadable lines
    /// (a torn last line of a killed process) are skipped; returns how many were merged.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn merge_file(&self, path: &Path) -> std::io::Result<usize> {
        let f = std::fs::File::open(path)?;
        let mut st = self.state.lock();
        let mut n = 0;
        for line in std::io::BufReader::new(f).lines() {
            let line = line?;
            if let Ok(l) = serde_json::from_str::<Line>(&line) {
                Self::apply_line(&mut st, l);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Handler calls of one step run and kind.
    #[must_use]
    pub fn calls(&self, instance: InstanceId, step: &str, kind: WorkKind) -> u32 {
        self.state
            .lock()
            .calls
            .get(&(instance, step.to_owned(), kind))
            .copied()
            .unwrap_or(0)
    }

    /// Every step run with its call counts (execute, compensate) of one instance.
    #[must_use]
    pub fn calls_of(&self, instance: InstanceId) -> Vec<(String, WorkKind, u32)> {
        let st = self.state.lock();
        let mut v: Vec<(String, WorkKind, u32)> = st
            .calls
            .iter()
            .filter(|((i, _, _), _)| *i == instance)
            .map(|((_, s, k), n)| (s.clone(), *k, *n))
            .collect();
        v.sort();
        v
    }

    /// The effect of a step run.
    #[must_use]
    pub fn effect(&self, instance: InstanceId, step: &str) -> Option<Effect> {
        self.state
            .lock()
            .effects
            .get(&(instance, step.to_owned()))
            .copied()
    }

    /// Every effect of one instance.
    #[must_use]
    pub fn effects_of(&self, instance: InstanceId) -> Vec<(String, Effect)> {
        let st = self.state.lock();
        let mut v: Vec<(String, Effect)> = st
            .effects
            .iter()
            .filter(|((i, _), _)| *i == instance)
            .map(|((_, s), e)| (s.clone(), *e))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Drops every entry of `instances` (validated: a long run must not keep what it has
    /// checked), keeping their part of the totals. An entry that arrives for one of them
    /// later — work on an instance after it was validated as settled — is counted as
    /// [`LedgerTotals::after_forget`] instead of recorded, for as long as the instance is
    /// remembered (two calls of [`Ledger::rotate_forgotten`]).
    pub fn forget(&self, instances: &HashSet<InstanceId>) {
        if instances.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        let st = &mut *st;
        st.calls.retain(|(i, _, _), _| !instances.contains(i));
        st.max_attempt.retain(|(i, _, _), _| !instances.contains(i));
        let forgotten = &mut st.forgotten;
        st.effects.retain(|(i, _), e| {
            if !instances.contains(i) {
                return true;
            }
            forgotten.duplicate_applies += u64::from(e.applies.saturating_sub(1 + e.late_applies));
            forgotten.late_applies += u64::from(e.late_applies);
            forgotten.net += e.net();
            false
        });
        st.gone[0].extend(instances.iter().copied());
    }

    /// Starts a new generation of forgotten instances: those forgotten before the previous
    /// call are no longer remembered (bounded memory).
    pub fn rotate_forgotten(&self) {
        let mut st = self.state.lock();
        st.gone[1] = std::mem::take(&mut st.gone[0]);
    }

    /// Totals: (handler calls, calls with attempt > 1, duplicate applies absorbed, late
    /// applies after a reversal, net balance).
    #[must_use]
    pub fn totals(&self) -> LedgerTotals {
        let st = self.state.lock();
        let f = &st.forgotten;
        LedgerTotals {
            calls: st.total_calls,
            retried_calls: st.retries,
            duplicate_applies: f.duplicate_applies
                + st.effects
                    .values()
                    .map(|e| u64::from(e.applies.saturating_sub(1 + e.late_applies)))
                    .sum::<u64>(),
            late_applies: f.late_applies
                + st.effects
                    .values()
                    .map(|e| u64::from(e.late_applies))
                    .sum::<u64>(),
            net: f.net + st.effects.values().map(Effect::net).sum::<i64>(),
            after_forget: f.after_forget,
        }
    }
}

/// Ledger totals for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTotals {
    /// Handler calls (forward and compensation).
    pub calls: u64,
    /// Calls that were a retry (attempt > 1).
    pub retried_calls: u64,
    /// Applies of an already applied effect (at-least-once deliveries the ledger absorbed).
    pub duplicate_applies: u64,
    /// Applies that arrived after the reversal (zombie work; ignored). Only meaningful in
    /// one process: merged files of worker processes are replayed in file order, not in
    /// time order.
    pub late_applies: u64,
    /// Net amount left in the ledger.
    pub net: i64,
    /// Entries that arrived for an instance after it was validated and forgotten (runs with
    /// [`crate::runner::Scenario::retention_ms`]): work on a settled instance. Counted, not
    /// recorded; the run reports them as a violation.
    #[serde(default)]
    pub after_forget: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_and_tombstoned() {
        let l = Ledger::new();
        let i = InstanceId::from_u128(1);
        l.apply(i, "a", 5);
        l.apply(i, "a", 5);
        assert_eq!(l.effect(i, "a").map(|e| e.net()), Some(5));
        l.reverse(i, "a");
        l.apply(i, "a", 5);
        let e = l.effect(i, "a").unwrap_or_default();
        assert_eq!(e.net(), 0);
        assert_eq!(e.late_applies, 1);
        l.reverse(i, "b");
        assert_eq!(l.effect(i, "b").map(|e| e.net()), Some(0));
        l.record_call(i, "a", WorkKind::Execute, 1);
        l.record_call(i, "a", WorkKind::Execute, 2);
        assert_eq!(l.calls(i, "a", WorkKind::Execute), 2);
        assert_eq!(l.totals().retried_calls, 1);
        assert_eq!(l.totals().duplicate_applies, 1);
    }

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("floxy-ledger-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let i = InstanceId::from_u128(9);
        {
            let l = Ledger::with_file(&dir).unwrap_or_default();
            l.record_call(i, "x", WorkKind::Execute, 1);
            l.apply(i, "x", 3);
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&dir)
            .and_then(|mut f| f.write_all(b"{\"t\":\"app"))
            .ok();
        let m = Ledger::new();
        assert_eq!(m.merge_file(&dir).ok(), Some(2));
        assert_eq!(m.effect(i, "x").map(|e| e.net()), Some(3));
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn forgetting_keeps_the_totals_and_counts_what_arrives_afterwards() {
        let l = Ledger::new();
        let (a, b) = (InstanceId::from_u128(1), InstanceId::from_u128(2));
        l.record_call(a, "x", WorkKind::Execute, 1);
        l.apply(a, "x", 5);
        l.apply(a, "x", 5);
        l.record_call(b, "x", WorkKind::Execute, 1);
        l.apply(b, "x", 7);
        let before = l.totals();
        l.forget(&HashSet::from([a]));
        assert_eq!(l.totals(), before, "forgetting must not change the totals");
        assert!(l.effects_of(a).is_empty() && l.calls_of(a).is_empty());
        assert_eq!(l.effect(b, "x").map(|e| e.net()), Some(7));

        // Work on a forgotten instance is counted, not recorded.
        l.apply(a, "x", 5);
        assert_eq!(l.totals().after_forget, 1);
        assert!(l.effects_of(a).is_empty());
        // Remembered for two generations, then forgotten for good (bounded memory).
        l.rotate_forgotten();
        l.record_call(a, "x", WorkKind::Execute, 2);
        assert_eq!(l.totals().after_forget, 2);
        l.rotate_forgotten();
        l.record_call(a, "x", WorkKind::Execute, 3);
        assert_eq!(l.totals().after_forget, 2);
        assert_eq!(l.calls(a, "x", WorkKind::Execute), 1);
    }
}
