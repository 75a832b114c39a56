//! Helpers shared by the integration tests: stores on fresh files in temporary directories,
//! and a varied history to write and read back whole.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use floxy_core::conformance::fixtures::{
    Observation, at, claim, create, definition, dlq_record, event, iid, key, next, observe, ok,
    start, stored_step, update, wf, write,
};
use floxy_core::model::{
    EventKind, InstanceStatus, LeaseCheck, QueueOp, StepStatus, Timestamp, WorkKind,
};
use floxy_core::store::{DlqQuery, InstanceQuery, Store, StoreStats};
use floxy_store_redb::{Durability, RedbOptions, RedbStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A temporary directory and a database path inside it.
pub(crate) struct TempDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempDb {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("floxy.redb");
        Self { dir, path }
    }
}

/// A command that runs test `name` of this test binary alone, in a child process (the
/// crash-style tests re-execute themselves; the child test is `#[ignore]`d, so a plain run
/// reports it skipped instead of passing it, and does its part when an environment variable
/// the caller sets tells it to). Add the environment and the stdio.
pub(crate) fn child_test(name: &str) -> std::process::Command {
    let mut c = std::process::Command::new(std::env::current_exe().expect("test binary"));
    c.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    c
}

/// The runtime of a child process: two worker threads, like a small service.
pub(crate) fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens `path` with `durability`.
pub(crate) fn open(path: &Path, durability: Durability) -> RedbStore {
    RedbStore::open(path, RedbOptions::default().durability(durability)).expect("open store")
}

/// A store on a fresh file that lives as long as the returned guard. The store is durable
/// (`Immediate`) unless told otherwise.
pub(crate) fn fresh(durability: Durability) -> (RedbStore, TempDb) {
    let db = TempDb::new();
    let store = open(&db.path, durability);
    (store, db)
}

/// The transition of an attempt of `step` (leased for `handler`) that failed and is retried at
/// `retry_at`: the run `retrying`, its item queued again, a `step_failed` event. The
/// transition rewrites the step's row, so its event is kept there (a step mark).
pub(crate) fn retry(
    s: &floxy_core::model::InstanceSnapshot,
    step: &str,
    handler: &str,
    now: floxy_core::model::Timestamp,
    retry_at: floxy_core::model::Timestamp,
) -> floxy_core::model::Transition {
    use floxy_core::conformance::fixtures::{event, execute, next, stored_step, write};
    use floxy_core::model::{EventKind, QueueOp, StepStatus};
    let mut t = next(s, now);
    let mut run = stored_step(s, step);
    run.status = StepStatus::Retrying;
    t.steps.push(write(run, Some(StepStatus::Running)));
    t.queue.push(QueueOp::Upsert(execute(
        s.instance.id,
        step,
        handler,
        retry_at,
    )));
    t.events.push(event(EventKind::StepFailed, Some(step)));
    t
}

/// Arms failpoint `floxy-redb::committing` (feature `failpoints`): the returned `Notify` gets
/// a permit when a batch starts its commit. A test that makes the next commit fail slowly
/// waits for it ([`committing`]) before it sends the requests it wants prepared on top of
/// that batch, instead of sleeping and hoping the batch got that far.
#[cfg(feature = "failpoints")]
pub(crate) fn arm_committing() -> std::sync::Arc<tokio::sync::Notify> {
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = started.clone();
    fail::cfg_callback("floxy-redb::committing", move || signal.notify_one()).unwrap();
    started
}

/// Waits until the batch [`arm_committing`] watches is committing (at most 10 s).
#[cfg(feature = "failpoints")]
pub(crate) async fn committing(started: &tokio::sync::Notify) {
    tokio::time::timeout(std::time::Duration::from_secs(10), started.notified())
        .await
        .expect("a batch started committing within 10 s");
    fail::remove("floxy-redb::committing");
}

/// The instances [`populate`] creates: `iid(1)` to `iid(N)`.
pub(crate) const N: u128 = 30;

#[derive(Debug, PartialEq)]
pub(crate) struct Everything {
    pub instances: Vec<Observation>,
    pub definitions: Vec<floxy_core::model::WorkflowDefinition>,
    pub listed: Vec<floxy_core::model::InstanceRecord>,
    pub dlq: Vec<floxy_core::model::DlqRecord>,
    pub stats: StoreStats,
    pub next_due: Option<Timestamp>,
    pub idem: Option<floxy_core::model::InstanceId>,
}

pub(crate) async fn everything(store: &RedbStore) -> Everything {
    let mut instances = Vec::new();
    for n in 1..=N {
        instances.push(observe(store, iid(n)).await);
    }
    Everything {
        instances,
        definitions: ok(store.list_definitions().await, "list_definitions"),
        listed: ok(
            store.list_instances(&InstanceQuery::default()).await,
            "list",
        )
        .items,
        dlq: ok(store.list_dlq(&DlqQuery::default()).await, "list_dlq").items,
        stats: ok(store.stats().await, "stats"),
        next_due: ok(store.next_due(&[Arc::from("h")]).await, "next_due"),
        idem: ok(store.find_by_idempotency_key(&wf(), "key-7").await, "find"),
    }
}

/// Writes a varied history: definitions, instances (one with an idempotency key), claims,
/// completions, retries, DLQ records, terminal instances, a cleanup.
#[allow(clippy::too_many_lines)]
pub(crate) async fn populate(store: &RedbStore) {
    ok(
        store
            .put_definition(&definition("orders", 1, "charge"))
            .await,
        "def",
    );
    ok(
        store.put_definition(&definition("audit", 3, "log")).await,
        "def",
    );
    for n in 1..=N {
        let mut t = start(
            iid(n),
            at(i64::try_from(n).unwrap()),
            &[("a", "h"), ("b", "h")],
        );
        if n == 7 {
            t.instance.idempotency_key = Some("key-7".into());
        }
        create(store, t).await;
    }
    // Claim a batch, complete some, retry some, park some in the DLQ.
    let claimed = claim(store, "w1", &["h"], 100, at(100)).await;
    assert_eq!(claimed.len(), 2 * N as usize, "every item leased");
    for (i, c) in claimed.iter().enumerate() {
        let id = c.item.key.instance_id;
        let step = c.item.key.step.clone();
        let token = c.item.lease.as_ref().map(|l| l.token).expect("lease");
        let k = c.item.key.clone();
        match i % 4 {
            0 => {
                ok(
                    update(store, id, move |s| {
                        let mut t = next(s, at(200));
                        t.lease_check = Some(LeaseCheck {
                            key: k.clone(),
                            token,
                        });
                        let mut r = stored_step(s, &step);
                        r.status = StepStatus::Completed;
                        t.steps.push(write(r, Some(StepStatus::Running)));
                        t.queue.push(QueueOp::Delete(k));
                        t.events.push(event(EventKind::StepCompleted, Some(&step)));
                        t
                    })
                    .await,
                    "complete",
                );
            }
            1 => {
                ok(
                    update(store, id, move |s| {
                        let mut t = next(s, at(200));
                        t.lease_check = Some(LeaseCheck {
                            key: k.clone(),
                            token,
                        });
                        let mut r = stored_step(s, &step);
                        r.status = StepStatus::Retrying;
                        t.steps.push(write(r, Some(StepStatus::Running)));
                        let mut item =
                            floxy_core::conformance::fixtures::execute(id, &step, "h", at(5_000));
                        item.attempt = 1;
                        t.queue.push(QueueOp::Upsert(item));
                        t.events.push(event(EventKind::StepRetry, Some(&step)));
                        t
                    })
                    .await,
                    "retry",
                );
            }
            2 if step.as_ref() == "a" => {
                ok(
                    update(store, id, move |s| {
                        let mut t = next(s, at(300));
                        t.instance.status = InstanceStatus::Dlq;
                        t.dlq_insert.push(dlq_record(id, &wf(), &step));
                        t.queue.push(QueueOp::RequestCancel(k));
                        t
                    })
                    .await,
                    "dlq",
                );
            }
            _ => {} // stays leased
        }
    }
    // Two terminal instances, one removed by cleanup.
    for (n, at_ms) in [(N - 1, 400), (N, 5_000)] {
        ok(
            update(store, iid(n), move |s| {
                let mut t = next(s, at(at_ms));
                t.instance.status = InstanceStatus::Completed;
                t.queue
                    .push(QueueOp::Delete(key(iid(n), "a", WorkKind::Execute)));
                t.queue
                    .push(QueueOp::Delete(key(iid(n), "b", WorkKind::Execute)));
                t.events.push(event(EventKind::WorkflowCompleted, None));
                t
            })
            .await,
            "terminal",
        );
    }
    assert_eq!(ok(store.cleanup(at(1_000)).await, "cleanup"), 1);
}
