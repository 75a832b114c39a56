//! Helpers shared by the integration tests: stores on fresh files in temporary directories.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use floxy_store_redb::{Durability, RedbOptions, RedbStore};
use std::path::{Path, PathBuf};

/// A temporary directory and a database path inside it.
pub struct TempDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("floxy.redb");
        Self { dir, path }
    }
}

/// A command that runs test `name` of this test binary alone, in a child process (the
/// crash-style tests re-execute themselves; the child test is `#[ignore]`d, so a plain run
/// reports it skipped instead of passing it, and does its part when an environment variable
/// the caller sets tells it to). Add the environment and the stdio.
pub fn child_test(name: &str) -> std::process::Command {
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
pub fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits until `store` has made `n` checkpoints (at most 10 s): the idle ones come from the
/// committing thread on its own, with nothing to wait on but the counter.
pub async fn wait_for_checkpoints(store: &RedbStore, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.writer_stats().checkpoints < n {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} checkpoints within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Opens `path` with `durability`.
pub fn open(path: &Path, durability: Durability) -> RedbStore {
    RedbStore::open(path, RedbOptions::default().durability(durability)).expect("open store")
}

/// A store on a fresh file that lives as long as the returned guard. The store is durable
/// (`Immediate`) unless told otherwise.
pub fn fresh(durability: Durability) -> (RedbStore, TempDb) {
    let db = TempDb::new();
    let store = open(&db.path, durability);
    (store, db)
}

/// Writes, in `txn`, what files of every older format version hold alike: the meta table
/// (format `version`; counters: last fencing token `last_token`, last event sequence
/// `last_seq`, one `running` and one completed instance, no DLQ), the two instance records,
/// the terminal entry of the completed one, and the tables that stay empty.
pub fn write_legacy_common(
    txn: &redb::WriteTransaction,
    version: u32,
    (last_token, last_seq): (u64, u64),
    running: floxy_core::model::InstanceId,
    done: floxy_core::model::InstanceId,
    at: floxy_core::model::Timestamp,
) {
    use floxy_core::conformance::fixtures::{instance, wf};
    use floxy_core::model::InstanceStatus;
    use redb::TableDefinition;
    let mut status_counts = vec![0_u64; InstanceStatus::ALL.len()];
    for s in [InstanceStatus::Running, InstanceStatus::Completed] {
        let i = InstanceStatus::ALL.iter().position(|x| *x == s).unwrap();
        status_counts[i] = 1;
    }
    let mut meta = txn
        .open_table(TableDefinition::<&str, &[u8]>::new("floxy_meta"))
        .unwrap();
    meta.insert("format_version", version.to_be_bytes().as_slice())
        .unwrap();
    // last token, last event sequence, last DLQ id, instances per status, DLQ count.
    let counters = (last_token, last_seq, 0_u64, status_counts, 0_u64);
    meta.insert("counters", rmp(&counters).as_slice()).unwrap();
    let mut inst = txn
        .open_table(TableDefinition::<u128, &[u8]>::new("floxy_instances"))
        .unwrap();
    let r = instance(running, &wf(), InstanceStatus::Running, at);
    inst.insert(running.0.as_u128(), rmp(&r).as_slice())
        .unwrap();
    let d = instance(done, &wf(), InstanceStatus::Completed, at);
    inst.insert(done.0.as_u128(), rmp(&d).as_slice()).unwrap();
    let mut terminal = txn
        .open_table(TableDefinition::<(i64, u128), ()>::new("floxy_terminal"))
        .unwrap();
    terminal
        .insert((at.as_millis(), done.0.as_u128()), ())
        .unwrap();
    txn.open_table(TableDefinition::<&str, &[u8]>::new("floxy_definitions"))
        .unwrap();
    txn.open_table(TableDefinition::<u64, &[u8]>::new("floxy_dlq"))
        .unwrap();
    txn.open_table(TableDefinition::<(u128, u64), ()>::new(
        "floxy_dlq_by_instance",
    ))
    .unwrap();
    txn.open_table(TableDefinition::<(&str, &str), u128>::new(
        "floxy_idempotency",
    ))
    .unwrap();
}

/// MessagePack as every format version wrote it (structs as arrays).
pub fn rmp<T: serde::Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec(v).expect("encode")
}

/// The transition of an attempt of `step` (leased for `handler`) that failed and is retried at
/// `retry_at`: the run `retrying`, its item queued again, a `step_failed` event. The
/// transition rewrites the step's row, so its event is kept there (a step mark).
pub fn retry(
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
pub fn arm_committing() -> std::sync::Arc<tokio::sync::Notify> {
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = started.clone();
    fail::cfg_callback("floxy-redb::committing", move || signal.notify_one()).unwrap();
    started
}

/// Waits until the batch [`arm_committing`] watches is committing (at most 10 s).
#[cfg(feature = "failpoints")]
pub async fn committing(started: &tokio::sync::Notify) {
    tokio::time::timeout(std::time::Duration::from_secs(10), started.notified())
        .await
        .expect("a batch started committing within 10 s");
    fail::remove("floxy-redb::committing");
}
