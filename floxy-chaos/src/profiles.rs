//! Named profiles: ready-made scenarios per backend.
//!
//! | profile | fault phase | load | faults |
//! |---|---|---|---|
//! | `short` | 20 s | 16 in flight, 2 engines × 8 workers | Floxy's handler fault mix, moderate store faults, engine crashes; PostgreSQL: proxy faults and one immediate restart |
//! | `default` | 60 s | as `short` | as `short`, PostgreSQL restarted twice |
//! | `stress` | 60 s | 64 in flight, 3 engines × 16 workers | heavier faults |
//! | `soak` | 10 min (use `--duration` for more) | as `default`, in steady mode | as `default`, a restart every few minutes |
//!
//! The soak runs in steady mode ([`Scenario::retention_ms`], 30 s): instances are validated
//! as they settle and finished ones are removed from the store, so the run holds about 30 s
//! of finished work whatever its length (reached some 40 s into the run), and its resident
//! memory, open descriptors and tasks at the end of the fault phase must be within 20 % of
//! their one-minute figures ([`crate::validate::Limits::max_resource_growth`]). With a
//! retention of a minute or more, the one-minute figure is taken while the store still
//! fills up, and the check compares a filling store with a full one.

use crate::backend::{BackendKind, BackendOptions};
use crate::inject::handler::HandlerFaults;
use crate::inject::store::StoreFaults;
use crate::proxy::client::NetworkFaults;
use crate::runner::Scenario;

/// Profile names.
pub const PROFILES: [&str; 4] = ["short", "default", "stress", "soak"];

/// The scenario and backend options of profile `name` on `backend` with `seed`; `None` for
/// an unknown profile.
#[must_use]
pub fn profile(name: &str, backend: BackendKind, seed: u64) -> Option<(Scenario, BackendOptions)> {
    let mut sc = Scenario {
        name: name.to_owned(),
        seed,
        ..Scenario::default()
    };
    let mut bo = BackendOptions {
        kind: backend,
        ..BackendOptions::default()
    };
    let pg = backend == BackendKind::Postgres;
    if pg {
        // Round trips through the proxy are slower: more generous timeouts and leases.
        sc.workload.step_timeout_ms = 3_000;
        sc.workload.lease_ttl_ms = 6_000;
        sc.limits.stall_timeout_ms = 60_000;
        sc.limits.settle_timeout_ms = 120_000;
        bo.network = Some(NetworkFaults::default());
    }
    match name {
        "short" => {
            sc.duration_ms = 20_000;
            if pg {
                bo.pg_restarts = 1;
                bo.pg_restart_interval_ms = (6_000, 10_000);
            }
        }
        "default" => {
            sc.duration_ms = 60_000;
            if pg {
                bo.pg_restarts = 2;
                bo.pg_restart_interval_ms = (10_000, 25_000);
            }
        }
        "stress" => {
            sc.duration_ms = 60_000;
            sc.concurrency = 64;
            sc.engines = 3;
            sc.workers = 16;
            sc.handler_faults = HandlerFaults {
                panic: 0.08,
                error: 0.08,
                hang: 0.02,
                sleep: 0.2,
                ..HandlerFaults::default()
            };
            sc.store_faults = StoreFaults {
                latency: 0.2,
                error: 0.05,
                lost_reply: 0.01,
                ..StoreFaults::default()
            };
            if pg {
                bo.pg_restarts = 2;
                bo.pg_restart_interval_ms = (10_000, 25_000);
            }
        }
        "soak" => {
            sc.duration_ms = 600_000;
            sc.retention_ms = Some(30_000);
            sc.limits.max_resource_growth = Some(0.2);
            if pg {
                bo.pg_restarts = 1_000;
                bo.pg_restart_interval_ms = (60_000, 240_000);
            }
        }
        _ => return None,
    }
    Some((sc, bo))
}
