//! Resource bounds over time: the resident memory, open file descriptors and tokio tasks of
//! this process, sampled during a run, and the check that a long run ends where its first
//! minute was (no growth).
//!
//! The runner takes a [`ResourceSample`] every [`SAMPLE_EVERY_MS`]. Two figures summarise
//! them, each the per-field median of the samples in a [`WINDOW_MS`] window: the
//! *one-minute figure* (the window ending [`FIRST_FIGURE_AT_MS`] into the fault phase) and
//! the *end figure* (the window ending with the fault phase). With
//! [`crate::validate::Limits::max_resource_growth`] set and a fault phase of at least twice
//! the first minute, a field whose end figure exceeds its one-minute figure by more than that
//! fraction, and by more than a small absolute slack (so that 3 → 4 descriptors is not
//! "33 % growth"), is a `resource_growth` violation. Medians, not single samples: the task
//! count follows the handlers running at that instant.
//!
//! Descriptors and tasks are compared *net of the store's connection pools*: a PostgreSQL
//! pool opens connections on demand and loses them to restarts and network faults, so how
//! many it holds at an instant (up to its capacity) says nothing about a leak. The backend
//! reports what its pools hold ([`Pooled`]: one descriptor per pooled connection, plus two
//! descriptors and three tasks per connection through the in-process proxy); everything
//! else — a proxy connection nobody pools any more, a task that never ends — still counts.
//!
//! Memory and descriptors are read from `/proc/self` (Linux); elsewhere they are `None` and
//! only tasks are compared.

use crate::validate::Violation;
use serde::{Deserialize, Serialize};

/// Pause between two samples, ms.
pub const SAMPLE_EVERY_MS: u64 = 5_000;
/// Most samples kept; beyond it every other sample is dropped (the timeline gets coarser).
pub const MAX_SAMPLES: usize = 2_048;
/// Width of the windows whose medians are the one-minute and the end figures, ms.
pub const WINDOW_MS: u64 = 20_000;
/// End of the window of the one-minute figure, ms into the run.
pub const FIRST_FIGURE_AT_MS: u64 = 60_000;
/// Growth of resident memory below this many bytes is never a violation.
pub const RSS_SLACK_BYTES: u64 = 8 << 20;
/// Growth of open descriptors below this many is never a violation.
pub const FD_SLACK: u64 = 8;
/// Growth of tokio tasks below this many is never a violation.
pub const TASK_SLACK: u64 = 32;

/// The resources of this process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSample {
    /// Time into the run, ms.
    pub t_ms: u64,
    /// Resident set size, bytes (`None` where `/proc/self/status` cannot be read).
    pub rss_bytes: Option<u64>,
    /// Open file descriptors (`None` where `/proc/self/fd` cannot be read).
    pub open_fds: Option<u64>,
    /// Alive tokio tasks of the runtime.
    pub tasks: u64,
    /// Of the descriptors, those held by the store's connection pools at that instant.
    #[serde(default)]
    pub pooled_fds: u64,
    /// Of the tasks, those serving the store's pooled connections at that instant.
    #[serde(default)]
    pub pooled_tasks: u64,
}

/// What the store's connection pools hold now: `(descriptors, tasks)`.
pub type Pooled = std::sync::Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

impl ResourceSample {
    /// Samples this process now, `t_ms` into the run, with `tasks` alive tokio tasks, of
    /// which the pools hold `pooled` (descriptors, tasks).
    #[must_use]
    pub fn now(t_ms: u64, tasks: usize, pooled: (u64, u64)) -> Self {
        Self {
            t_ms,
            rss_bytes: rss_bytes(),
            open_fds: open_fds(),
            tasks: tasks as u64,
            pooled_fds: pooled.0,
            pooled_tasks: pooled.1,
        }
    }

    /// Descriptors not held by the pools.
    #[must_use]
    pub fn net_fds(&self) -> Option<u64> {
        self.open_fds.map(|n| n.saturating_sub(self.pooled_fds))
    }

    /// Tasks not serving pooled connections.
    #[must_use]
    pub fn net_tasks(&self) -> u64 {
        self.tasks.saturating_sub(self.pooled_tasks)
    }

    /// One line: `rss 41.2 MiB, 23 fds, 87 tasks`.
    #[must_use]
    pub fn describe(&self) -> String {
        let rss = self.rss_bytes.map_or_else(
            || "rss ?".to_owned(),
            |b| format!("rss {:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        );
        let fds = self
            .open_fds
            .map_or_else(|| "? fds".to_owned(), |n| format!("{n} fds"));
        let pooled = if self.pooled_fds > 0 || self.pooled_tasks > 0 {
            format!(
                " ({} fds and {} tasks of them pooled)",
                self.pooled_fds, self.pooled_tasks
            )
        } else {
            String::new()
        };
        format!("{rss}, {fds}, {} tasks{pooled}", self.tasks)
    }
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1_024)
}

/// Entries of `/proc/self/fd` (the directory handle read them with is one of them).
fn open_fds() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(dir.count().saturating_sub(1) as u64)
}

/// The samples of a run and their two figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// The samples, oldest first (thinned out once there are [`MAX_SAMPLES`]).
    pub samples: Vec<ResourceSample>,
    /// Median of the window ending [`FIRST_FIGURE_AT_MS`] into the run (`None`: the fault
    /// phase was shorter).
    pub at_one_minute: Option<ResourceSample>,
    /// Median of the window ending with the fault phase.
    pub at_end: Option<ResourceSample>,
}

impl Resources {
    /// Adds a sample.
    pub fn push(&mut self, s: ResourceSample) {
        if self.samples.len() >= MAX_SAMPLES {
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        self.samples.push(s);
    }

    /// Computes the two figures of a fault phase of `fault_phase_ms`.
    pub fn summarise(&mut self, fault_phase_ms: u64) {
        self.at_one_minute = (fault_phase_ms >= FIRST_FIGURE_AT_MS)
            .then(|| {
                self.median(
                    FIRST_FIGURE_AT_MS.saturating_sub(WINDOW_MS),
                    FIRST_FIGURE_AT_MS,
                )
            })
            .flatten();
        self.at_end = self.median(fault_phase_ms.saturating_sub(WINDOW_MS), fault_phase_ms);
    }

    /// The per-field median of the samples taken in `from..=to` ms.
    fn median(&self, from: u64, to: u64) -> Option<ResourceSample> {
        let window: Vec<&ResourceSample> = self
            .samples
            .iter()
            .filter(|s| (from..=to).contains(&s.t_ms))
            .collect();
        if window.is_empty() {
            return None;
        }
        let med = |mut v: Vec<u64>| -> Option<u64> {
            v.sort_unstable();
            v.get(v.len() / 2).copied()
        };
        Some(ResourceSample {
            t_ms: to,
            rss_bytes: med(window.iter().filter_map(|s| s.rss_bytes).collect()),
            open_fds: med(window.iter().filter_map(|s| s.open_fds).collect()),
            tasks: med(window.iter().map(|s| s.tasks).collect()).unwrap_or(0),
            pooled_fds: med(window.iter().map(|s| s.pooled_fds).collect()).unwrap_or(0),
            pooled_tasks: med(window.iter().map(|s| s.pooled_tasks).collect()).unwrap_or(0),
        })
    }

    /// Medians of the net descriptors and tasks of the samples in `from..=to` ms.
    fn net_median(&self, from: u64, to: u64) -> (Option<u64>, Option<u64>) {
        let window: Vec<&ResourceSample> = self
            .samples
            .iter()
            .filter(|s| (from..=to).contains(&s.t_ms))
            .collect();
        let med = |mut v: Vec<u64>| -> Option<u64> {
            v.sort_unstable();
            v.get(v.len() / 2).copied()
        };
        (
            med(window.iter().filter_map(|s| s.net_fds()).collect()),
            med(window.iter().map(|s| s.net_tasks()).collect()),
        )
    }

    /// The `resource_growth` violations of fields whose end figure exceeds the one-minute
    /// figure by more than `max_growth` (a fraction: 0.2 is 20 %) and by more than the
    /// field's slack. Nothing when either figure is missing.
    #[must_use]
    pub fn growth_violations(&self, max_growth: f64) -> Vec<Violation> {
        let (Some(first), Some(end)) = (self.at_one_minute, self.at_end) else {
            return Vec::new();
        };
        let (first_fds, first_tasks) =
            self.net_median(first.t_ms.saturating_sub(WINDOW_MS), first.t_ms);
        let (end_fds, end_tasks) = self.net_median(end.t_ms.saturating_sub(WINDOW_MS), end.t_ms);
        let mut out = Vec::new();
        let mut check = |what: &str, a: Option<u64>, b: Option<u64>, slack: u64| {
            let (Some(a), Some(b)) = (a, b) else { return };
            let grown = b.saturating_sub(a);
            if grown > slack && b as f64 > a as f64 * (1.0 + max_growth) {
                out.push(Violation::new(
                    "resource_growth",
                    format!(
                        "{what} grew from {a} at one minute to {b} at the end of the fault phase ({:+.0} %, limit {:.0} %)",
                        (b as f64 / a.max(1) as f64 - 1.0) * 100.0,
                        max_growth * 100.0
                    ),
                ));
            }
        };
        check(
            "resident memory (bytes)",
            first.rss_bytes,
            end.rss_bytes,
            RSS_SLACK_BYTES,
        );
        check(
            "open file descriptors (net of the pools)",
            first_fds,
            end_fds,
            FD_SLACK,
        );
        check(
            "tokio tasks (net of the pools)",
            first_tasks,
            end_tasks,
            TASK_SLACK,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_s: u64, rss_mib: u64, fds: u64, tasks: u64) -> ResourceSample {
        ResourceSample {
            t_ms: t_s * 1_000,
            rss_bytes: Some(rss_mib << 20),
            open_fds: Some(fds),
            tasks,
            pooled_fds: 0,
            pooled_tasks: 0,
        }
    }

    #[test]
    fn a_pool_filling_up_is_not_growth_but_a_leak_beside_it_is() {
        // A pool of connections through the proxy: 10 at one minute, 40 at the end (3 fds
        // and 3 tasks each); 20 other descriptors and 15 other tasks throughout.
        let pool = |t: u64| if t > 90 { 40 } else { 10 };
        let sample = |t: u64, extra_fds: u64| ResourceSample {
            pooled_fds: 3 * pool(t),
            pooled_tasks: 3 * pool(t),
            ..s(t, 100, 20 + extra_fds + 3 * pool(t), 15 + 3 * pool(t))
        };
        let filling: Vec<_> = (0..=120).step_by(5).map(|t| sample(t, 0)).collect();
        assert!(run(&filling, 120).growth_violations(0.2).is_empty());
        // The same, and 30 descriptors nobody pools by the end.
        let leaking: Vec<_> = (0..=120)
            .step_by(5)
            .map(|t| sample(t, if t > 90 { 30 } else { 0 }))
            .collect();
        let v = run(&leaking, 120).growth_violations(0.2);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].detail.contains("net of the pools"), "{}", v[0].detail);
    }

    fn run(samples: &[ResourceSample], fault_phase_s: u64) -> Resources {
        let mut r = Resources::default();
        for x in samples {
            r.push(*x);
        }
        r.summarise(fault_phase_s * 1_000);
        r
    }

    #[test]
    fn steady_figures_pass_and_growth_beyond_the_limit_fails() {
        let steady: Vec<_> = (0..=120)
            .step_by(5)
            .map(|t| s(t, 100 + (t % 10) / 5, 30, 80 + t % 7))
            .collect();
        let r = run(&steady, 120);
        assert_eq!(r.at_one_minute.map(|x| x.open_fds), Some(Some(30)));
        assert!(r.growth_violations(0.2).is_empty(), "{r:?}");

        // Memory that grows linearly: about 90 MiB at one minute, 150 MiB at two.
        let leaking: Vec<_> = (0..=120).step_by(5).map(|t| s(t, 40 + t, 30, 80)).collect();
        let v = run(&leaking, 120).growth_violations(0.2);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].kind, "resource_growth");
        assert!(v[0].detail.contains("resident memory"), "{}", v[0].detail);

        // Descriptors that leak: 30 → 60.
        let fds: Vec<_> = (0..=120)
            .step_by(5)
            .map(|t| s(t, 100, if t > 100 { 60 } else { 30 }, 80))
            .collect();
        let v = run(&fds, 120).growth_violations(0.2);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].detail.contains("descriptors"), "{}", v[0].detail);
    }

    #[test]
    fn small_absolute_changes_and_single_spikes_are_not_growth() {
        // 3 → 6 descriptors is +100 % but within the slack; one spike of memory at the end
        // is outvoted by the window's median.
        let mut v: Vec<_> = (0..=120)
            .step_by(5)
            .map(|t| s(t, 100, if t > 100 { 6 } else { 3 }, 10))
            .collect();
        v.push(s(119, 900, 6, 10));
        v.sort_by_key(|x| x.t_ms);
        assert!(run(&v, 120).growth_violations(0.2).is_empty());
    }

    #[test]
    fn a_short_phase_has_no_one_minute_figure_and_no_verdict() {
        let r = run(&[s(5, 10, 3, 1), s(10, 500, 300, 900)], 20);
        assert!(r.at_one_minute.is_none());
        assert!(r.at_end.is_some());
        assert!(r.growth_violations(0.2).is_empty());
    }

    #[test]
    fn the_timeline_is_thinned_not_unbounded() {
        let mut r = Resources::default();
        for t in 0..(MAX_SAMPLES as u64 * 3) {
            r.push(s(t, 1, 1, 1));
        }
        assert!(r.samples.len() <= MAX_SAMPLES);
        assert_eq!(
            r.samples.last().map(|x| x.t_ms),
            Some((MAX_SAMPLES as u64 * 3 - 1) * 1_000)
        );
    }

    #[test]
    fn this_process_can_be_sampled() {
        let x = ResourceSample::now(0, 1, (0, 0));
        if cfg!(target_os = "linux") {
            assert!(x.rss_bytes.is_some_and(|b| b > 1 << 20), "{x:?}");
            assert!(x.open_fds.is_some_and(|n| n >= 3), "{x:?}");
        }
    }
}
