//! Checkpoints of an idle store (`Durability::Immediate`): once the committing thread has had
//! nothing to commit for a while and the write-ahead log holds a sixteenth of
//! `checkpoint_bytes`, it checkpoints, and the log starts over. A child process writes, waits
//! for that checkpoint, writes more (into the log that started over), and aborts without a
//! close; the parent reopens the file and finds every acknowledged write.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use floxy_core::conformance::fixtures::{at, create, iid, next, ok, snapshot, start, update};
use floxy_store_redb::{RedbOptions, RedbStore};
use std::time::Duration;

const CHILD_ENV: &str = "FLOXY_REDB_IDLE_CHECKPOINT_CHILD";
/// Instances written before the idle checkpoint, and after it.
const BEFORE: u128 = 150;
const AFTER: u128 = 40;
/// Printed by the child right before it aborts, once everything is acknowledged.
const DONE: &str = "IDLE-CHECKPOINT-CHILD-DONE";

/// 256 KiB: the batches below never reach it, so the only checkpoint is the idle one (at
/// 16 KiB of log).
fn options() -> RedbOptions {
    RedbOptions::default().checkpoint_bytes(256 << 10)
}

#[test]
#[ignore = "the child process of idle_checkpoint_then_abort_loses_nothing, which runs it"]
fn idle_checkpoint_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    common::child_runtime().block_on(async move {
        let store = RedbStore::open(&path, options()).expect("open");
        // Concurrent creates, so the writer groups them into a few batches.
        futures::future::join_all(
            (1..=BEFORE).map(|n| create(&store, start(iid(n), at(0), &[("a", "h")]))),
        )
        .await;
        assert_eq!(
            store.writer_stats().checkpoints,
            0,
            "no batch reached checkpoint_bytes"
        );
        common::wait_for_checkpoints(&store, 1).await;
        // Into the log that started over: new instances, and updates of checkpointed ones.
        futures::future::join_all(
            (BEFORE + 1..=BEFORE + AFTER).map(|n| create(&store, start(iid(n), at(1), &[]))),
        )
        .await;
        for n in 1..=AFTER {
            ok(
                update(&store, iid(n), |s| next(s, at(2))).await,
                "update after the idle checkpoint",
            );
        }
        println!("{DONE}");
        // No close: the process ends as a crash would leave it.
        std::process::abort();
    });
}

#[test]
fn idle_checkpoint_then_abort_loses_nothing() {
    let db = common::TempDb::new();
    let out = common::child_test("idle_checkpoint_child")
        .env(CHILD_ENV, &db.path)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(DONE),
        "the child did not finish its writes: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the child aborted");
    futures::executor::block_on(async {
        let store = RedbStore::open(&db.path, options()).expect("reopen");
        for n in 1..=BEFORE + AFTER {
            let snap = snapshot(&store, iid(n)).await;
            let version = if n <= AFTER { 2 } else { 1 };
            assert_eq!(snap.instance.version, version, "instance {n}");
        }
        store.close().await.expect("close");
    });
}

#[test]
fn no_idle_checkpoints_when_turned_off() {
    let db = common::TempDb::new();
    common::child_runtime().block_on(async {
        let store = RedbStore::open(&db.path, options().idle_checkpoint_ms(0)).expect("open store");
        futures::future::join_all(
            (1..=BEFORE).map(|n| create(&store, start(iid(n), at(0), &[("a", "h")]))),
        )
        .await;
        // Four times the default idle wait.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(store.writer_stats().checkpoints, 0);
        store.close().await.expect("close");
    });
}
