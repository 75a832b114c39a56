//! A file in format version 4 (claims' `step_started` events as short marks in their step
//! rows, every other event in `floxy_events`) is migrated when opened by recording the new
//! version: its rows are valid version-5 rows, its events list as before, and the events
//! version 5 keeps in step rows (long marks) join them in sequence order, across a reopen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use floxy_core::conformance::fixtures::{claim, create, event, next, start, update};
use floxy_core::model::{EventKind, InstanceId, Timestamp};
use floxy_core::store::Store;
use floxy_store_redb::{Durability, FORMAT_VERSION};
use redb::{ReadableDatabase, TableDefinition};

const T0: Timestamp = Timestamp(1_700_000_000_000);
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("floxy_meta");

fn version(path: &std::path::Path) -> u32 {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let meta = rtx.open_table(META).unwrap();
    let v = meta.get("format_version").unwrap().unwrap();
    u32::from_be_bytes(v.value().try_into().unwrap())
}

fn set_version(path: &std::path::Path, v: u32) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("format_version", v.to_be_bytes().as_slice())
        .unwrap();
    txn.commit().unwrap();
}

async fn kinds(store: &floxy_store_redb::RedbStore, id: InstanceId) -> Vec<(u64, EventKind)> {
    store
        .list_events(id, None, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.seq, e.kind))
        .collect()
}

#[test]
fn a_version_4_file_is_migrated_by_recording_the_version() {
    let db = common::TempDb::new();
    let a = InstanceId(uuid::Uuid::now_v7());
    // What version 4 wrote: a claim's short mark, a transition's events in a row of their
    // own (`next` writes no step row, so version 5 writes the same).
    let before = futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        create(&store, start(a, T0, &[("s1", "h1")])).await;
        assert_eq!(claim(&store, "w", &["h1"], 10, T0).await.len(), 1);
        update(&store, a, |s| {
            let mut t = next(s, T0.add_ms(1));
            t.events.push(event(EventKind::StepPaused, Some("s1")));
            t
        })
        .await
        .unwrap();
        let before = kinds(&store, a).await;
        store.close().await.unwrap();
        before
    });
    assert_eq!(
        before.iter().map(|(_, k)| *k).collect::<Vec<_>>(),
        [
            EventKind::WorkflowStarted,
            EventKind::StepStarted,
            EventKind::StepPaused
        ]
    );
    set_version(&db.path, 4);

    futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        assert_eq!(kinds(&store, a).await, before, "every event survives");
        // A failure that rewrites s1's row: its event is a long mark in that row.
        update(&store, a, |s| {
            common::retry(s, "s1", "h1", T0.add_ms(2), T0.add_ms(3))
        })
        .await
        .unwrap();
        store.close().await.unwrap();
    });
    assert_eq!(
        version(&db.path),
        FORMAT_VERSION,
        "the file is now version 5"
    );

    futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        let after = kinds(&store, a).await;
        assert_eq!(after.len(), 4);
        assert_eq!(after[..3], before[..]);
        assert_eq!(after[3].1, EventKind::StepFailed);
        assert!(after[3].0 > before[2].0, "in sequence order");
        // The claim index was rebuilt from the rows: the retry is claimable.
        assert_eq!(claim(&store, "w", &["h1"], 10, T0.add_ms(3)).await.len(), 1);
        store.close().await.unwrap();
    });
}
