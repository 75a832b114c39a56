//! A file in format version 2 (step rows and event rows holding the model types whole),
//! written here table by table as version 2 laid it out, is migrated when opened: every
//! run, item (lease included), event and counter survives, claims go on from where they
//! were, and the file then reopens in the current version. A version-2 row that holds a run
//! of another step is refused, and the file is left as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::rmp;
use floxy_core::conformance::fixtures::{execute, item, key, step_run, wf};
use floxy_core::model::{
    Event, EventKind, FencingToken, InstanceId, InstanceStatus, Lease, Payload, QueueItem, StepRun,
    StepStatus, Timestamp, WorkKind,
};
use floxy_core::store::Store;
use floxy_store_redb::{Durability, FORMAT_VERSION, OpenError, RedbOptions, RedbStore};
use redb::{ReadableDatabase, TableDefinition};
use std::sync::Arc;

const T0: Timestamp = Timestamp(1_700_000_000_000);

fn u(id: InstanceId) -> u128 {
    id.0.as_u128()
}

/// What the version-2 file holds.
struct V2 {
    running: InstanceId,
    done: InstanceId,
    items: Vec<QueueItem>,
    runs: Vec<StepRun>,
    events: Vec<Event>,
}

fn event(seq: u64, id: InstanceId, kind: EventKind, step: Option<&str>) -> Event {
    Event {
        seq,
        instance_id: id,
        at: T0,
        kind,
        step: step.map(Into::into),
        attempt: step.map(|_| 1),
        detail: Some(Payload::new(serde_json::json!({ "seq": seq }))),
    }
}

/// Writes a version-2 file at `path`; `misfiled` files the run of `s2` under `s1`'s key.
fn write_v2(path: &std::path::Path, misfiled: bool) -> V2 {
    let running = InstanceId(uuid::Uuid::now_v7());
    let done = InstanceId(uuid::Uuid::now_v7());
    let mut leased = execute(running, "s1", "h", T0);
    leased.attempt = 1;
    leased.lease = Some(Lease {
        owner: Arc::from("w-old"),
        token: FencingToken(7),
        expires_at: Timestamp(i64::MAX / 2),
    });
    let orphan = item(
        &wf(),
        key(running, "orphan", WorkKind::Timer),
        "h-timer",
        T0,
    );
    let s2_item = execute(running, "s2", "h", T0);
    let mut s1 = step_run(running, "s1", StepStatus::Running, T0);
    s1.attempts = 1;
    let s2 = step_run(running, "s2", StepStatus::Pending, T0);
    let only = step_run(done, "only", StepStatus::Completed, T0);
    // Step rows in key order: (instance, step) → (run, items in kind order).
    let rows: Vec<(InstanceId, &str, Option<&StepRun>, Vec<&QueueItem>)> = vec![
        (running, "orphan", None, vec![&orphan]),
        (
            running,
            "s1",
            Some(if misfiled { &s2 } else { &s1 }),
            vec![&leased],
        ),
        (running, "s2", Some(&s2), vec![&s2_item]),
        (done, "only", Some(&only), vec![]),
    ];
    // Two rows of events for `running` (a transition's two, then a claim's one).
    let events = vec![
        event(1, running, EventKind::WorkflowStarted, None),
        event(2, running, EventKind::StepStarted, Some("s1")),
        event(3, running, EventKind::StepStarted, Some("s2")),
    ];
    let db = redb::Database::create(path).expect("create raw");
    let txn = db.begin_write().expect("txn");
    {
        common::write_legacy_common(&txn, 2, (7, 3), running, done, T0);
        let mut steps = txn
            .open_table(TableDefinition::<(u128, &str), &[u8]>::new("floxy_steps"))
            .unwrap();
        for (id, step, run, items) in &rows {
            steps
                .insert((u(*id), *step), rmp(&(run, items)).as_slice())
                .unwrap();
        }
        let mut live = txn
            .open_table(TableDefinition::<u128, ()>::new("floxy_live"))
            .unwrap();
        live.insert(u(running), ()).unwrap();
        let mut ev = txn
            .open_table(TableDefinition::<(u128, u64), &[u8]>::new("floxy_events"))
            .unwrap();
        ev.insert((u(running), 1), rmp(&events[..2].to_vec()).as_slice())
            .unwrap();
        ev.insert((u(running), 3), rmp(&events[2..].to_vec()).as_slice())
            .unwrap();
    }
    txn.commit().expect("commit");
    V2 {
        running,
        done,
        items: vec![orphan, leased, s2_item],
        runs: vec![s1, s2],
        events,
    }
}

fn version(path: &std::path::Path) -> u32 {
    let db = redb::Database::open(path).expect("open raw");
    let rtx = db.begin_read().unwrap();
    let meta = rtx
        .open_table(TableDefinition::<&str, &[u8]>::new("floxy_meta"))
        .unwrap();
    let v = meta.get("format_version").unwrap().unwrap();
    u32::from_be_bytes(<[u8; 4]>::try_from(v.value()).unwrap())
}

#[test]
fn a_version_2_file_is_migrated_on_open() {
    let db = common::TempDb::new();
    let v2 = write_v2(&db.path, false);
    futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        let mut got = store.list_steps(v2.running).await.unwrap();
        got.sort_by(|a, b| a.step.cmp(&b.step));
        assert_eq!(got, v2.runs, "step runs survive");
        assert_eq!(
            store.list_queue(v2.running).await.unwrap(),
            v2.items,
            "queue items survive, in key order, the lease included"
        );
        assert!(store.list_queue(v2.done).await.unwrap().is_empty());
        let snap = store.load_instance(v2.done).await.unwrap().unwrap();
        assert_eq!(snap.instance.status, InstanceStatus::Completed);
        assert_eq!(snap.steps.len(), 1);
        assert_eq!(
            store.list_events(v2.running, None, 0).await.unwrap(),
            v2.events,
            "events survive, details included"
        );
        assert_eq!(
            store.list_events(v2.running, Some(1), 1).await.unwrap(),
            v2.events[1..2],
            "a page that starts inside a row"
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
            "tokens go on from the version-2 counter"
        );
        let events = store.list_events(v2.running, Some(3), 0).await.unwrap();
        assert_eq!(events.len(), 1, "the claim's event: {events:?}");
        assert_eq!(events[0].seq, 4, "sequence numbers go on");
        store.close().await.unwrap();
    });
    assert_eq!(version(&db.path), FORMAT_VERSION);
    // Reopened in the current version, the claim made after the migration is there.
    futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        let q = store.list_queue(v2.running).await.unwrap();
        assert_eq!(q.len(), 3);
        let s2 = q.iter().find(|i| &*i.key.step == "s2").unwrap();
        assert_eq!(s2.lease.as_ref().unwrap().token, FencingToken(8));
        assert_eq!(
            store.list_events(v2.running, None, 0).await.unwrap().len(),
            4
        );
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.queue_ready, stats.queue_leased), (1, 2), "{stats:?}");
        store.close().await.unwrap();
    });
}

#[test]
fn a_version_2_row_holding_another_steps_run_is_refused_and_the_file_left_as_is() {
    let db = common::TempDb::new();
    write_v2(&db.path, true);
    match RedbStore::open(&db.path, RedbOptions::default()) {
        Err(OpenError::Other { reason, .. }) => {
            assert!(
                reason.contains("format version 2") && reason.contains("another step"),
                "{reason}"
            );
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a misfiled run was migrated"),
    }
    assert_eq!(version(&db.path), 2, "the failed migration changed nothing");
}
