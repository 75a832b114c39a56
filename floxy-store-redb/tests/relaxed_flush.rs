//! `Durability::Relaxed` syncs the commits it left unsynced once their interval is over, even
//! when no further request arrives: a child process (this test binary, re-executed) creates
//! an instance and then stays idle; the parent kills it with SIGKILL well after the interval
//! and the reopened file must hold the instance.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use floxy_core::conformance::fixtures::{iid, start};
use floxy_core::model::Timestamp;
use floxy_core::store::Store;
use floxy_store_redb::{Durability, RedbOptions, RedbStore};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

const CHILD_ENV: &str = "FLOXY_REDB_RELAXED_CHILD";
const INTERVAL_MS: u64 = 100;

/// The child: one acknowledged (unsynced) create, then idle until killed.
#[test]
#[ignore = "the child process of relaxed_commits_are_synced_after_the_interval_without_more_requests, which runs it"]
fn child_creates_then_idles() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = RedbStore::open(
        std::path::Path::new(&path),
        RedbOptions::default().durability(Durability::Relaxed {
            flush_interval_ms: INTERVAL_MS,
        }),
    )
    .expect("open");
    futures::executor::block_on(async {
        store
            .create_instance(start(iid(1), Timestamp(1_700_000_000_000), &[("s1", "h")]))
            .await
            .expect("create");
    });
    println!("\nFLOXY-CHILD-CREATED");
    loop {
        std::thread::sleep(Duration::from_mins(1));
    }
}

#[test]
fn relaxed_commits_are_synced_after_the_interval_without_more_requests() {
    let db = common::TempDb::new();
    let mut child = common::child_test("child_creates_then_idles")
        .env(CHILD_ENV, &db.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let created = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim() == "FLOXY-CHILD-CREATED");
    assert!(created, "the child acknowledged its create");
    // Well past the interval: the idle child must have synced by now.
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * 8));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let store = common::open(&db.path, Durability::Immediate);
    let found = futures::executor::block_on(store.get_instance(iid(1))).expect("read");
    assert!(
        found.is_some(),
        "an acknowledged relaxed commit, idle for 8 intervals, survives SIGKILL"
    );
    futures::executor::block_on(store.close()).expect("close");
}
