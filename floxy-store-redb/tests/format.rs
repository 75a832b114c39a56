//! The on-disk format: `tests/data/format-v1.redb`, a file this crate wrote in format
//! version 1 (definitions, instances with step runs and queue items, leases, events, DLQ
//! records, an idempotency key, a terminal instance and a cleanup: the history
//! `common::populate` writes), must open and read back exactly what that history leaves.
//!
//! A change to the layout or to the encoding of any record breaks this test: such a change
//! is a new format version (bump `FORMAT_VERSION`, and either migrate the old files or say
//! that they are refused), and the fixture is then regenerated with
//!
//! ```text
//! cargo test -p floxy-store-redb --test format -- --ignored write_the_format_fixture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Everything, N, TempDb, everything, populate};
use floxy_core::conformance::fixtures::{iid, ok, wf};
use floxy_core::model::{EventKind, InstanceStatus};
use floxy_core::store::Store;
use floxy_store_redb::{FORMAT_VERSION, RedbOptions, RedbStore};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/data/format-v{FORMAT_VERSION}.redb"))
}

/// What the history leaves, read from a fresh file this build writes.
async fn expected() -> Everything {
    let db = TempDb::new();
    let store = RedbStore::open(&db.path, RedbOptions::default()).expect("open");
    populate(&store).await;
    let e = everything(&store).await;
    store.close().await.expect("close");
    e
}

#[test]
fn the_checked_in_file_of_this_format_reads_back_whole() {
    let fixture = fixture();
    assert!(
        fixture.is_file(),
        "{} is missing: is FORMAT_VERSION new? (see this file's docs)",
        fixture.display()
    );
    // Opened on a copy: opening writes (redb's header, floxy's tables).
    let db = TempDb::new();
    std::fs::copy(&fixture, &db.path).expect("copy the fixture");
    futures::executor::block_on(async {
        let store = RedbStore::open(&db.path, RedbOptions::default()).expect("open the fixture");
        let found = everything(&store).await;

        // Known content, spelled out.
        let mut defs: Vec<String> = found
            .definitions
            .iter()
            .map(|d| d.id().as_str().to_owned())
            .collect();
        defs.sort();
        assert_eq!(defs, ["audit-v3", "orders-v1"], "definitions");
        assert_eq!(found.idem, Some(iid(7)), "idempotency key");
        // Of N instances, the last two completed and the one completed early was cleaned up.
        assert_eq!(found.listed.len(), N as usize - 1, "instances");
        assert!(ok(store.get_instance(iid(N - 1)).await, "get").is_none());
        let done = ok(store.get_instance(iid(N)).await, "get").expect("the completed one");
        assert_eq!(done.status, InstanceStatus::Completed);
        assert_eq!(found.dlq.len(), 15, "DLQ records: {:?}", found.dlq);
        assert!(found.dlq.iter().all(|r| r.record.workflow_id == wf()));
        assert_eq!(found.stats.dlq, 15);
        let one = &found.instances[0];
        assert_eq!(one.steps.len(), 2, "steps of instance 1");
        assert!(!one.queue.is_empty(), "queue of instance 1");
        let kinds: Vec<EventKind> = one.events.iter().map(|e| e.kind).collect();
        assert!(
            kinds.starts_with(&[EventKind::WorkflowStarted, EventKind::StepStarted]),
            "events of instance 1: {kinds:?}"
        );
        assert!(
            one.queue
                .iter()
                .any(|i| i.attempt == 1 && i.lease.is_none()),
            "instance 1 has a step to retry: {:?}",
            one.queue
        );
        assert!(
            found
                .instances
                .iter()
                .any(|o| o.queue.iter().any(|i| i.lease.is_some())),
            "leases held"
        );
        assert!(found.stats.queue_leased > 0 && found.stats.queue_ready > 0);

        // And all of it exactly as this build writes it.
        assert_eq!(found, expected().await, "the fixture reads back as written");
        store.close().await.expect("close");
    });
}

/// Writes the fixture (see the module docs), compacted so that it stays small.
#[test]
#[ignore = "writes tests/data/format-v<FORMAT_VERSION>.redb: run it only to regenerate the fixture"]
fn write_the_format_fixture() {
    let path = fixture();
    std::fs::create_dir_all(path.parent().expect("tests/data")).expect("tests/data");
    let _ = std::fs::remove_file(&path);
    futures::executor::block_on(async {
        let store = RedbStore::open(&path, RedbOptions::default()).expect("open");
        populate(&store).await;
        store.close().await.expect("close");
    });
    let mut db = redb::Database::create(&path).expect("reopen with redb");
    while db.compact().expect("compact") {}
    drop(db);
    println!(
        "wrote {} ({} bytes)",
        path.display(),
        std::fs::metadata(&path).expect("written").len()
    );
}
