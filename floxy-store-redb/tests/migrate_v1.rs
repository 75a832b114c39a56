//! A file in format version 1 (queue items in their own table), written here table by
//! table as version 1 laid it out, is migrated to the current version when opened: every
//! run, item (lease included), event and counter survives, claims go on from where they
//! were, and the file then reopens in the current version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::rmp;
use floxy_core::conformance::fixtures::{execute, item, key, step_run, wf};
use floxy_core::model::{
    Event, EventKind, FencingToken, InstanceId, InstanceStatus, Lease, QueueItem, StepRun,
    StepStatus, Timestamp, WorkKind,
};
use floxy_core::store::Store;
use floxy_store_redb::{Durability, FORMAT_VERSION};
use redb::{ReadableDatabase, TableDefinition, TableHandle};
use std::sync::Arc;

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn u(id: InstanceId) -> u128 {
    id.0.as_u128()
}

/// What the version-1 file holds.
struct V1 {
    running: InstanceId,
    done: InstanceId,
    items: Vec<QueueItem>,
    runs: Vec<StepRun>,
    events: Vec<Event>,
}

/// Writes a version-1 file at `path`.
fn write_v1(path: &std::path::Path) -> V1 {
    let running = InstanceId(uuid::Uuid::now_v7());
    let done = InstanceId(uuid::Uuid::now_v7());
    let mut leased = execute(running, "s1", "h", T0);
    leased.attempt = 1;
    leased.lease = Some(Lease {
        owner: Arc::from("w-old"),
        token: FencingToken(7),
        expires_at: Timestamp(i64::MAX / 2),
    });
    let items = vec![
        // An item whose step has no run (the contract allows it).
        item(
            &wf(),
            key(running, "orphan", WorkKind::Timer),
            "h-timer",
            T0,
        ),
        leased,
        execute(running, "s2", "h", T0),
    ];
    let mut s1 = step_run(running, "s1", StepStatus::Running, T0);
    s1.attempts = 1;
    let runs = vec![
        s1,
        step_run(running, "s2", StepStatus::Pending, T0),
        step_run(done, "only", StepStatus::Completed, T0),
    ];
    let events = vec![
        Event {
            seq: 1,
            instance_id: running,
            at: T0,
            kind: EventKind::WorkflowStarted,
            step: None,
            attempt: None,
            detail: None,
        },
        Event {
            seq: 2,
            instance_id: running,
            at: T0,
            kind: EventKind::StepStarted,
            step: Some("s1".into()),
            attempt: Some(1),
            detail: None,
        },
    ];
    let db = redb::Database::create(path).expect("create raw");
    let txn = db.begin_write().expect("txn");
    {
        common::write_legacy_common(&txn, 1, (7, 2), running, done, T0);
        let mut steps = txn
            .open_table(TableDefinition::<(u128, &str), &[u8]>::new("floxy_steps"))
            .unwrap();
        for run in &runs {
            steps
                .insert((u(run.instance_id), &*run.step), rmp(run).as_slice())
                .unwrap();
        }
        let mut queue = txn
            .open_table(TableDefinition::<(u128, &str, u8), &[u8]>::new(
                "floxy_queue",
            ))
            .unwrap();
        for it in &items {
            let code = match it.key.kind {
                WorkKind::Execute => 0_u8,
                WorkKind::Compensate => 1,
                WorkKind::Timer => 2,
            };
            queue
                .insert(
                    (u(it.key.instance_id), &*it.key.step, code),
                    rmp(it).as_slice(),
                )
                .unwrap();
        }
        let mut ev = txn
            .open_table(TableDefinition::<(u128, u64), &[u8]>::new("floxy_events"))
            .unwrap();
        for e in &events {
            ev.insert((u(e.instance_id), e.seq), rmp(e).as_slice())
                .unwrap();
        }
    }
    txn.commit().expect("commit");
    V1 {
        running,
        done,
        items,
        runs,
        events,
    }
}

fn version_and_tables(path: &std::path::Path) -> (u32, Vec<String>) {
    let db = redb::Database::open(path).expect("open raw");
    let rtx = db.begin_read().unwrap();
    let meta = rtx
        .open_table(TableDefinition::<&str, &[u8]>::new("floxy_meta"))
        .unwrap();
    let v = meta.get("format_version").unwrap().unwrap();
    let version = u32::from_be_bytes(<[u8; 4]>::try_from(v.value()).unwrap());
    let tables = rtx
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    (version, tables)
}

#[test]
fn a_version_1_file_is_migrated_on_open() {
    let db = common::TempDb::new();
    let v1 = write_v1(&db.path);
    futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        // Runs and items, leases included, as they were.
        let steps = store.list_steps(v1.running).await.unwrap();
        let mut expected: Vec<StepRun> = v1
            .runs
            .iter()
            .filter(|r| r.instance_id == v1.running)
            .cloned()
            .collect();
        expected.sort_by(|a, b| a.step.cmp(&b.step));
        let mut got = steps.clone();
        got.sort_by(|a, b| a.step.cmp(&b.step));
        assert_eq!(got, expected, "step runs survive");
        assert_eq!(
            store.list_queue(v1.running).await.unwrap(),
            v1.items,
            "queue items survive, in key order, the lease included"
        );
        assert!(store.list_queue(v1.done).await.unwrap().is_empty());
        let snap = store.load_instance(v1.done).await.unwrap().unwrap();
        assert_eq!(snap.instance.status, InstanceStatus::Completed);
        assert_eq!(snap.steps.len(), 1);
        assert_eq!(
            store.list_events(v1.running, None, 0).await.unwrap(),
            v1.events
        );
        // The claim index was rebuilt from the migrated rows; counters carried on.
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.queue_ready, stats.queue_leased), (2, 1), "{stats:?}");
        let claimed = store
            .claim(&floxy_core::conformance::fixtures::request(
                "w",
                &["h"],
                10,
                T0,
            ))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "only s2: s1 is still leased to w-old");
        assert_eq!(&*claimed[0].item.key.step, "s2");
        assert_eq!(
            claimed[0].item.lease.as_ref().unwrap().token,
            FencingToken(8),
            "tokens go on from the version-1 counter"
        );
        assert_eq!(claimed[0].run.status, StepStatus::Running);
        store.close().await.unwrap();
    });
    let (version, tables) = version_and_tables(&db.path);
    assert_eq!(
        version, FORMAT_VERSION,
        "the file is now version {FORMAT_VERSION}"
    );
    assert!(
        !tables.iter().any(|t| t == "floxy_queue"),
        "the version-1 queue table is gone: {tables:?}"
    );
    // Reopened in the current version, the claim made after the migration is there.
    futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        let q = store.list_queue(v1.running).await.unwrap();
        assert_eq!(q.len(), 3);
        let s2 = q.iter().find(|i| &*i.key.step == "s2").unwrap();
        assert_eq!(s2.lease.as_ref().unwrap().token, FencingToken(8));
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.queue_ready, stats.queue_leased), (1, 2), "{stats:?}");
        store.close().await.unwrap();
    });
}
