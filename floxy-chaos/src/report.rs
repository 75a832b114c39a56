//! Reports: the live stats line and the final report (text and JSON).

use crate::ledger::LedgerTotals;
use crate::resources::Resources;
use crate::validate::Violation;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Counters of a run, live and final.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Instances started.
    pub started: u64,
    /// Instances completed.
    pub completed: u64,
    /// Instances failed (after their rollback).
    pub failed: u64,
    /// Instances cancelled.
    pub cancelled: u64,
    /// Instances aborted.
    pub aborted: u64,
    /// Instances parked in the DLQ.
    pub dlq: u64,
    /// Instances not settled (yet).
    pub unsettled: u64,
    /// Handler calls (forward and compensation).
    pub handler_calls: u64,
    /// Handler calls that were retries.
    pub retries: u64,
    /// Steps completed (settled instances).
    pub steps_completed: u64,
    /// Instances that rolled back (rollback depth > 0).
    pub rollbacks: u64,
    /// Largest rollback depth seen.
    pub max_rollback_depth: u32,
    /// Compensations started (settled instances).
    pub compensations: u64,
    /// Lease expiries (settled instances).
    pub lease_expiries: u64,
    /// Operator cancels and aborts issued.
    pub operator_commands: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Instances validated (and forgotten) during the run, in steady mode.
    #[serde(default)]
    pub validated_during_run: u64,
    /// Finished instances the steady mode removed from the store.
    #[serde(default)]
    pub cleaned: u64,
}

impl Stats {
    /// The one-line form printed every stats interval.
    #[must_use]
    pub fn line(&self, elapsed_s: u64) -> String {
        let faults: u64 = self.faults.values().sum();
        let mut s = format!(
            "[stats t={elapsed_s}s] started={} completed={} failed={} cancelled={} aborted={} dlq={} in_flight={} calls={} retries={} rollbacks={} max_depth={} faults={}",
            self.started,
            self.completed,
            self.failed,
            self.cancelled,
            self.aborted,
            self.dlq,
            self.unsettled,
            self.handler_calls,
            self.retries,
            self.rollbacks,
            self.max_rollback_depth,
            faults
        );
        if !self.faults.is_empty() {
            s.push_str(" (");
            let parts: Vec<String> = self
                .faults
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&parts.join(" "));
            s.push(')');
        }
        s
    }
}

/// The verdict of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No invariant was violated.
    Pass,
    /// At least one invariant was violated.
    Fail,
}

/// The final report of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Seed (replays the run: `--seed`).
    pub seed: u64,
    /// Backend name.
    pub backend: String,
    /// Profile or scenario name.
    pub scenario: String,
    /// Whether time was virtual (simulation).
    pub virtual_time: bool,
    /// Length of the fault phase, ms.
    pub fault_phase_ms: u64,
    /// Total run time (clock of the run), ms.
    pub elapsed_ms: u64,
    /// Verdict.
    pub verdict: Verdict,
    /// Counters.
    pub stats: Stats,
    /// Ledger totals.
    pub ledger: LedgerTotals,
    /// Tokio tasks before the run.
    pub baseline_tasks: usize,
    /// Most tokio tasks seen during the run.
    pub max_tasks: usize,
    /// Tokio tasks after shutdown.
    pub final_tasks: usize,
    /// Resident memory, open descriptors and tasks over the run, with the one-minute and
    /// end figures ([`crate::resources`]).
    #[serde(default)]
    pub resources: Resources,
    /// Broken invariants (capped at 200; `violations_total` has the count).
    pub violations: Vec<Violation>,
    /// Number of violations.
    pub violations_total: usize,
    /// Violations by kind.
    pub violations_by_kind: BTreeMap<String, usize>,
    /// A digest of the end state (statuses, steps, ledger) for replay comparisons.
    pub digest: String,
    /// Notes (skipped checks, degraded injectors).
    pub notes: Vec<String>,
}

impl Report {
    /// Whether the run passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// Adds a violation found after the run (e.g. by the caller that owns the backend).
    pub fn add_violation(&mut self, v: Violation) {
        *self.violations_by_kind.entry(v.kind.clone()).or_default() += 1;
        self.violations_total += 1;
        if self.violations.len() < 200 {
            self.violations.push(v);
        }
        self.verdict = Verdict::Fail;
    }

    /// The report as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The report as text.
    #[must_use]
    pub fn to_text(&self) -> String {
        let s = &self.stats;
        let mut t = String::new();
        let _ = writeln!(t, "=== floxy-chaos report ===");
        let _ = writeln!(
            t,
            "scenario {} on {} | seed {} | fault phase {} ms | elapsed {} ms{}",
            self.scenario,
            self.backend,
            self.seed,
            self.fault_phase_ms,
            self.elapsed_ms,
            if self.virtual_time {
                " (virtual time)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            t,
            "instances: started {} | completed {} | failed {} | cancelled {} | aborted {} | dlq {} | unsettled {}",
            s.started, s.completed, s.failed, s.cancelled, s.aborted, s.dlq, s.unsettled
        );
        let _ = writeln!(
            t,
            "steps: completed {} | handler calls {} | retries {} | compensations {} | lease expiries {} | operator commands {}",
            s.steps_completed,
            s.handler_calls,
            s.retries,
            s.compensations,
            s.lease_expiries,
            s.operator_commands
        );
        let _ = writeln!(
            t,
            "rollbacks: {} | max rollback depth {}",
            s.rollbacks, s.max_rollback_depth
        );
        let _ = writeln!(
            t,
            "ledger: net {} | duplicate applies absorbed {} | late applies after reversal {}",
            self.ledger.net, self.ledger.duplicate_applies, self.ledger.late_applies
        );
        let _ = writeln!(
            t,
            "tasks: baseline {} | max {} | final {}",
            self.baseline_tasks, self.max_tasks, self.final_tasks
        );
        if let Some(end) = &self.resources.at_end {
            match &self.resources.at_one_minute {
                Some(first) => {
                    let _ = writeln!(
                        t,
                        "resources: at one minute {} | at the end of the fault phase {}",
                        first.describe(),
                        end.describe()
                    );
                }
                None => {
                    let _ = writeln!(
                        t,
                        "resources: at the end of the fault phase {}",
                        end.describe()
                    );
                }
            }
        }
        if s.validated_during_run > 0 || s.cleaned > 0 {
            let _ = writeln!(
                t,
                "steady mode: {} instances validated during the run | {} removed from the store",
                s.validated_during_run, s.cleaned
            );
        }
        let total: u64 = s.faults.values().sum();
        let _ = writeln!(t, "faults injected: {total}");
        for (k, v) in &s.faults {
            let _ = writeln!(t, "  {k}: {v}");
        }
        for n in &self.notes {
            let _ = writeln!(t, "note: {n}");
        }
        if self.violations_total == 0 {
            let _ = writeln!(t, "verdict: PASS (no invariant violated)");
        } else {
            let _ = writeln!(
                t,
                "verdict: FAIL ({} violations: {})",
                self.violations_total,
                self.violations_by_kind
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            for v in self.violations.iter().take(50) {
                let _ = writeln!(t, "  {v}");
            }
            let _ = writeln!(t, "replay: --seed {}", self.seed);
        }
        t
    }
}
