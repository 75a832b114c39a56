//! Opening fails with a clear, typed error naming the path for: a missing directory, a
//! read-only file, a file that is not a floxy database (not redb; redb without floxy's
//! tables; an unknown format version) and a file held open by another process.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TempDb;
use floxy_core::store::StoreError;
use floxy_store_redb::{Durability, FORMAT_VERSION, OpenError, RedbOptions, RedbStore};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

fn open_err(path: &std::path::Path) -> OpenError {
    match RedbStore::open(path, RedbOptions::default()) {
        Ok(_) => panic!("opening {} should fail", path.display()),
        Err(e) => e,
    }
}

fn assert_names_path(e: &OpenError, path: &std::path::Path) {
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "the message names the path: {msg}"
    );
    assert_eq!(e.path(), path);
}

#[test]
fn missing_directory() {
    let db = TempDb::new();
    let path = db.dir.path().join("no-such-dir").join("floxy.redb");
    let e = open_err(&path);
    assert!(matches!(e, OpenError::MissingDirectory { .. }), "{e:?}");
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!path.exists(), "nothing was created");
}

#[test]
fn read_only_file() {
    let db = TempDb::new();
    futures::executor::block_on(common::open(&db.path, Durability::default()).close())
        .expect("close");
    std::fs::set_permissions(&db.path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let e = open_err(&db.path);
    assert!(matches!(e, OpenError::ReadOnly { .. }), "{e:?}");
    assert_names_path(&e, &db.path);
    assert!(e.to_string().contains("read-only"), "{e}");
    // Writable again: opens.
    std::fs::set_permissions(&db.path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    futures::executor::block_on(common::open(&db.path, Durability::default()).close())
        .expect("close");
}

#[test]
fn not_a_redb_file() {
    let db = TempDb::new();
    std::fs::write(
        &db.path,
        b"this is a text file, certainly not a database\n".repeat(200),
    )
    .expect("write");
    let e = open_err(&db.path);
    assert!(matches!(e, OpenError::NotFloxyDatabase { .. }), "{e:?}");
    assert_names_path(&e, &db.path);
    assert!(e.to_string().contains("is not a floxy database"), "{e}");
    let as_store: StoreError = e.into();
    assert!(matches!(as_store, StoreError::Corrupt(_)), "{as_store:?}");
    // The file is left as it was.
    assert!(
        std::fs::read(&db.path)
            .expect("read")
            .starts_with(b"this is a text file")
    );
}

#[test]
fn redb_file_of_another_application() {
    let db = TempDb::new();
    {
        let other = redb::Database::create(&db.path).expect("create");
        let txn = other.begin_write().expect("txn");
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("accounts"))
                .expect("table");
            t.insert("alice", &10).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let e = open_err(&db.path);
    assert!(matches!(e, OpenError::NotFloxyDatabase { .. }), "{e:?}");
    assert!(
        e.to_string().contains("accounts"),
        "names what it found: {e}"
    );
}

#[test]
fn unknown_format_version() {
    let db = TempDb::new();
    futures::executor::block_on(common::open(&db.path, Durability::default()).close())
        .expect("close");
    {
        let raw = redb::Database::create(&db.path).expect("open raw");
        let txn = raw.begin_write().expect("txn");
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("floxy_meta"))
                .expect("meta");
            meta.insert(
                "format_version",
                (FORMAT_VERSION + 1).to_be_bytes().as_slice(),
            )
            .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let e = open_err(&db.path);
    match &e {
        OpenError::UnsupportedFormatVersion {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected UnsupportedFormatVersion, got {other:?}"),
    }
    assert_names_path(&e, &db.path);
    assert!(
        matches!(StoreError::from(e), StoreError::Corrupt(_)),
        "a Corrupt-style store error"
    );
}

#[test]
fn already_open_in_this_process() {
    let db = TempDb::new();
    let store = common::open(&db.path, Durability::default());
    let e = open_err(&db.path);
    assert!(matches!(e, OpenError::AlreadyOpen { .. }), "{e:?}");
    assert_names_path(&e, &db.path);
    futures::executor::block_on(store.close()).expect("close");
    // Released by close.
    futures::executor::block_on(common::open(&db.path, Durability::default()).close())
        .expect("close");
}

const HOLD_ENV: &str = "FLOXY_REDB_TEST_HOLD";

/// Not a test of its own: the child process of `already_open_in_another_process` (runs only
/// with the environment variable set). Opens the file, says so, waits for stdin to close.
#[test]
#[ignore = "the child process of already_open_in_another_process, which runs it"]
fn child_holds_the_file() {
    let Some(path) = std::env::var_os(HOLD_ENV) else {
        return;
    };
    let store = common::open(std::path::Path::new(&path), Durability::default());
    println!("FLOXY-CHILD-READY");
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
    futures::executor::block_on(store.close()).expect("close");
}

#[test]
fn already_open_in_another_process() {
    let db = TempDb::new();
    let mut child = common::child_test("child_holds_the_file")
        .env(HOLD_ENV, &db.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.any(|l| l.is_ok_and(|l| l.contains("FLOXY-CHILD-READY")));
    assert!(ready, "the child opened the file");
    let e = open_err(&db.path);
    assert!(matches!(e, OpenError::AlreadyOpen { .. }), "{e:?}");
    assert_names_path(&e, &db.path);
    assert!(e.to_string().contains("already open"), "{e}");
    assert!(
        matches!(StoreError::from(e), StoreError::Unavailable(_)),
        "retryable once the other process is gone"
    );
    drop(child.stdin.take());
    assert!(
        child.wait().expect("wait").success(),
        "the child exits cleanly"
    );
    futures::executor::block_on(common::open(&db.path, Durability::default()).close())
        .expect("close");
}
