//! Names of the crash points that fault-injection tests can arm.
//!
//! The runtime (`floxy`, built with its `failpoints` feature) and the stores evaluate
//! [fail-rs](https://docs.rs/fail) failpoints under these names. This module only names them
//! (the core does not depend on `fail`): tests and the `floxy-chaos` crate configure them with
//! `fail::cfg(NAME, "actions")`, e.g. `fail::cfg(AFTER_CLAIM, "5%return")`.
//!
//! # Actions
//!
//! Every point understands the fail-rs actions `off`, `panic(msg)`, `print(msg)`, counts
//! (`3*return->off`) and percentages (`10%return`). `return` takes an argument that says what
//! to do at the point:
//!
//! | action | meaning |
//! |---|---|
//! | `return` (no argument, or any argument not listed below) | a crash at this point of *this unit of work*: the worker abandons it, commits nothing more, and leaves its lease to expire (the next claim counts the attempt as lost) |
//! | `return(N)` with `N` a number | an asynchronous delay of `N` ms at this point (the tokio timer, never a blocking sleep), then go on |
//! | `return(exit)` | abort the whole process at this point (`std::process::abort`): a real crash, for multi-process chaos runs |
//!
//! The blocking fail-rs actions `sleep(N)`, `delay(N)` and `pause` stall a tokio worker
//! thread: use `return(N)` instead. The fail registry is process-global: tests that arm
//! failpoints must run serially (their own test target, or one process per test).
//!
//! Store-side points ([`INSIDE_COMMIT`]) read the argument of `return` a little differently;
//! see that constant.

/// After a claim returned an item, before its handler runs (or its lease-expiry / timer input
/// is fed to the core). A crash here loses the claimed attempt: the lease expires and the
/// attempt counts as failed.
pub const AFTER_CLAIM: &str = "floxy::after_claim";

/// After the handler returned, before its result is committed. A crash here loses a result
/// whose side effects already happened: the step runs again (at-least-once), with the same
/// idempotency key.
pub const BEFORE_COMMIT: &str = "floxy::before_commit";

/// Inside a store's commit of a transition ([`crate::store::Store::update_instance`]),
/// evaluated by the store itself after the transition was computed and checked, before it is
/// durable. For this point `return` (no argument) fails the commit with a retryable
/// [`crate::store::StoreError::Unavailable`] and writes nothing; `return(applied)` applies the
/// transition and then reports `Unavailable` anyway (the ambiguous commit of a lost
/// acknowledgement); `return(exit)` aborts the process mid-commit. A store that can wait
/// asynchronously inside its commit treats `return(N)` as a delay of `N` ms while it holds the
/// instance's lock; one that cannot (the memory store) ignores it.
pub const INSIDE_COMMIT: &str = "floxy::inside_commit";

/// After a transition was committed, before the worker acknowledges it (wakes local waiters,
/// releases its lease bookkeeping). A crash here leaves a durable commit that the worker never
/// saw succeed.
pub const AFTER_COMMIT: &str = "floxy::after_commit";

/// In the heartbeat task, before leases are extended. `return` skips this beat as if the
/// store call had failed (leases may then expire while handlers run); `panic` kills the
/// heartbeat task.
pub const HEARTBEAT: &str = "floxy::heartbeat";

/// Every failpoint name, in the order a unit of work meets them.
pub const ALL: [&str; 5] = [
    AFTER_CLAIM,
    BEFORE_COMMIT,
    INSIDE_COMMIT,
    AFTER_COMMIT,
    HEARTBEAT,
];

/// Failpoints evaluated by the runtime (`floxy`); [`INSIDE_COMMIT`] is the stores'.
pub const RUNTIME: [&str; 4] = [AFTER_CLAIM, BEFORE_COMMIT, AFTER_COMMIT, HEARTBEAT];
