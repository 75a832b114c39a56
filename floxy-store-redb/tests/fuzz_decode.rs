//! Fuzzed row decoding: the decoders of every record the store reads from its file
//! (`floxy_store_redb::fuzzing`, feature `fuzzing`) on arbitrary bytes, on mutations of the
//! real rows of the checked-in format fixture (`tests/data/format-v1.redb`) and on hostile
//! shapes (deep nesting, huge length prefixes); and, end to end, the fixture with one row
//! replaced by mutated bytes, opened and read whole through the `Store` API. Every input
//! gives `Ok` or a typed error ([`StoreError::Corrupt`] for a record that does not decode;
//! an [`OpenError`] at open) within the guard's time and memory bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz_guard;
use floxy_core::model::{EventKind, InstanceId, StepName};
use floxy_core::store::{DlqQuery, InstanceQuery, Store, StoreError};
use floxy_store_redb::fuzzing::{Record, decode};
use floxy_store_redb::{FORMAT_VERSION, RedbOptions, RedbStore};
use fuzz_guard::guarded;
use proptest::prelude::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

// The tables of the layout (same names and types as the crate's `layout`).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("floxy_meta");
const DEFINITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("floxy_definitions");
const INSTANCES: TableDefinition<u128, &[u8]> = TableDefinition::new("floxy_instances");
const STEPS: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("floxy_steps");
const EVENTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("floxy_events");
const DLQ: TableDefinition<u64, &[u8]> = TableDefinition::new("floxy_dlq");

/// A row of the fixture: where it is and its value.
#[derive(Debug, Clone)]
enum Key {
    Meta(String),
    Definition(String),
    Instance(u128),
    Step(u128, String),
    Event(u128, u64),
    Dlq(u64),
}

#[derive(Debug, Clone)]
struct Row {
    record: Record,
    key: Key,
    bytes: Vec<u8>,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/data/format-v{FORMAT_VERSION}.redb"))
}

/// Every value-carrying row of the fixture (read from a copy: opening writes).
static ROWS: LazyLock<Vec<Row>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.redb");
    std::fs::copy(fixture(), &path).unwrap();
    let db = redb::Database::open(&path).unwrap();
    let r = db.begin_read().unwrap();
    let mut rows = Vec::new();
    for e in r.open_table(META).unwrap().iter().unwrap() {
        let (k, v) = e.unwrap();
        if k.value() == "counters" {
            rows.push(Row {
                record: Record::Counters,
                key: Key::Meta(k.value().to_owned()),
                bytes: v.value().to_vec(),
            });
        }
    }
    for e in r.open_table(DEFINITIONS).unwrap().iter().unwrap() {
        let (k, v) = e.unwrap();
        rows.push(Row {
            record: Record::Definition,
            key: Key::Definition(k.value().to_owned()),
            bytes: v.value().to_vec(),
        });
    }
    for e in r.open_table(INSTANCES).unwrap().iter().unwrap() {
        let (k, v) = e.unwrap();
        rows.push(Row {
            record: Record::Instance,
            key: Key::Instance(k.value()),
            bytes: v.value().to_vec(),
        });
    }
    for e in r.open_table(STEPS).unwrap().iter().unwrap() {
        let (k, v) = e.unwrap();
        let (id, step) = k.value();
        rows.push(Row {
            record: Record::StepRow,
            key: Key::Step(id, step.to_owned()),
            bytes: v.value().to_vec(),
        });
    }
    for e in r.open_table(EVENTS).unwrap().iter().unwrap() {
        let (k, v) = e.unwrap();
        let (id, seq) = k.value();
        rows.push(Row {
            record: Record::Events,
            key: Key::Event(id, seq),
            bytes: v.value().to_vec(),
        });
    }
    for e in r.open_table(DLQ).unwrap().iter().unwrap() {
        let (k, v) = e.unwrap();
        rows.push(Row {
            record: Record::Dlq,
            key: Key::Dlq(k.value()),
            bytes: v.value().to_vec(),
        });
    }
    for rec in Record::ALL {
        let kind = if rec == Record::StepMarks {
            Record::StepRow
        } else {
            rec
        };
        assert!(
            rows.iter().any(|r| r.record == kind),
            "the fixture has no {rec:?} row"
        );
    }
    rows
});

/// Decodes under the guard; an error must be `Corrupt`.
fn check(record: Record, bytes: Vec<u8>) -> Result<(), StoreError> {
    let what = format!(
        "decode {record:?} of {} bytes {:02x?}",
        bytes.len(),
        &bytes[..bytes.len().min(64)]
    );
    let r = guarded(&what, move || {
        decode(
            record,
            InstanceId::from_u128(1),
            &StepName::from("step"),
            &bytes,
        )
    });
    if let Err(e) = &r {
        assert!(
            matches!(e, StoreError::Corrupt(_)),
            "{record:?}: not Corrupt: {e:?}"
        );
        assert!(!e.to_string().is_empty());
    }
    r
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    Duplicate { at: usize, len: usize, times: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // MessagePack markers worth inserting: nil, bools, containers and their 16/32-bit length
    // forms with huge lengths, str/bin/ext headers, floats, negative ints.
    let interesting = prop::sample::select(vec![
        vec![0xc0],
        vec![0xc2],
        vec![0xc3],
        vec![0x90],
        vec![0x80],
        vec![0xa0],
        vec![0xdc, 0xff, 0xff],
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xde, 0xff, 0xff],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff],
        vec![0xc6, 0xff, 0xff, 0xff, 0xff],
        vec![0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
        vec![0xd4, 0x01, 0x00],
        vec![0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
        vec![0xff],
        vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
        vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        vec![0x91; 64],
        b"\"{[".to_vec(),
    ]);
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (
            any::<usize>(),
            prop_oneof![interesting, prop::collection::vec(any::<u8>(), 1..6)]
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 1usize..16, 1usize..32).prop_map(|(at, len, times)| Mutation::Duplicate {
            at,
            len,
            times
        }),
    ]
}

fn mutate(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let n = b.len();
        match m {
            Mutation::Flip { at, bit } if n > 0 => b[at % n] ^= 1 << bit,
            Mutation::Set { at, byte } if n > 0 => b[at % n] = *byte,
            Mutation::Insert { at, bytes } => {
                let p = at % (n + 1);
                b.splice(p..p, bytes.iter().copied());
            }
            Mutation::Delete { at, len } if n > 0 => {
                let p = at % n;
                b.drain(p..(p + len).min(n));
            }
            Mutation::Truncate { at } => b.truncate(at % (n + 1)),
            Mutation::Duplicate { at, len, times } if n > 0 => {
                let p = at % n;
                let slice = b[p..(p + len).min(n)].to_vec();
                for _ in 0..*times {
                    b.splice(p..p, slice.iter().copied());
                }
            }
            _ => {}
        }
    }
    b
}

fn record() -> impl Strategy<Value = Record> {
    prop::sample::select(Record::ALL.to_vec())
}

#[test]
fn every_row_of_the_fixture_decodes() {
    for row in ROWS.iter() {
        check(row.record, row.bytes.clone()).unwrap_or_else(|e| panic!("{row:?}: {e}"));
        if row.record == Record::StepRow {
            check(Record::StepMarks, row.bytes.clone()).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_guard::cases(2_000), ..ProptestConfig::default() })]

    /// Arbitrary bytes as every record.
    #[test]
    fn arbitrary_bytes_decode_or_are_corrupt(
        record in record(),
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(any::<u8>(), 0..1_024),
        ],
    ) {
        let _ = check(record, bytes);
    }

    /// Real rows with one to four mutations, decoded as their own record and, one case in
    /// four, as another one.
    #[test]
    fn mutated_rows_decode_or_are_corrupt(
        row in 0usize..10_000,
        muts in prop::collection::vec(mutation(), 1..5),
        other in prop::option::weighted(0.25, record()),
    ) {
        let row = &ROWS[row % ROWS.len()];
        let record = match (other, row.record) {
            (None, Record::StepRow) if muts.len() % 2 == 0 => Record::StepMarks,
            (Some(r), _) | (None, r) => r,
        };
        let _ = check(record, mutate(&row.bytes, &muts));
    }
}

/// An events row whose one event's detail payload is `payload` (raw `MessagePack`).
fn event_row_with_detail(payload: &[u8]) -> Vec<u8> {
    // [[seq, at, kind, step, attempt, detail]] with detail nil, then nil replaced.
    let mut b = rmp_serde::to_vec(&vec![(
        1u64,
        1i64,
        EventKind::WorkflowStarted,
        None::<String>,
        None::<u32>,
        (),
    )])
    .unwrap();
    assert_eq!(b.pop(), Some(0xc0));
    b.extend_from_slice(payload);
    b
}

/// Nesting and lengths no writer produces: deep arrays and maps in a payload, containers,
/// strings and binaries announcing gigabytes, all as every record.
#[test]
fn hostile_shapes_are_corrupt_in_bounded_time_and_memory() {
    // The builder's own row decodes (the harness reads what it means to).
    check(Record::Events, event_row_with_detail(&[0xc0])).unwrap();
    check(Record::Events, event_row_with_detail(&[0x91, 0x91, 0xc0])).unwrap();
    // Payloads nested within the decode depth limit read back; deeper ones are Corrupt.
    let nested = |depth: usize| {
        let mut b = vec![0x91; depth];
        b.push(0xc0);
        event_row_with_detail(&b)
    };
    check(Record::Events, nested(250)).unwrap();
    assert!(check(Record::Events, nested(260)).is_err());
    let mut shapes: Vec<Vec<u8>> = Vec::new();
    for depth in [100, 1_000, 10_000, 1_000_000] {
        let mut deep = vec![0x91; depth];
        deep.push(0xc0);
        shapes.push(event_row_with_detail(&deep));
        shapes.push(deep);
        let mut maps = [0x81, 0xa1, b'k'].repeat(depth);
        maps.push(0xc0);
        shapes.push(event_row_with_detail(&maps));
    }
    for header in [
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
        vec![0xc6, 0xff, 0xff, 0xff, 0xff, 0],
        vec![0xc9, 0xff, 0xff, 0xff, 0xff, 1, 0],
    ] {
        shapes.push(event_row_with_detail(&header));
        let mut top = header.clone();
        top.extend(std::iter::repeat_n(0xc0, 1_000));
        shapes.push(top);
        // Arrays of 4 Gi elements of every record's outer shape.
        let mut nested = vec![0x93];
        nested.extend_from_slice(&header);
        shapes.push(nested);
    }
    for bytes in shapes {
        for record in Record::ALL {
            let _ = check(record, bytes.clone());
        }
    }
    // A definition (JSON) nested far past serde_json's recursion limit.
    let json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(check(Record::Definition, json.into_bytes()).is_err());
}

/// Overwrites the fixture's `row` (in a copy at `path`) with `bytes`.
fn write_row(path: &Path, row: &Row, bytes: &[u8]) {
    let db = redb::Database::open(path).unwrap();
    let w = db.begin_write().unwrap();
    {
        match &row.key {
            Key::Meta(k) => {
                w.open_table(META)
                    .unwrap()
                    .insert(k.as_str(), bytes)
                    .unwrap();
            }
            Key::Definition(k) => {
                w.open_table(DEFINITIONS)
                    .unwrap()
                    .insert(k.as_str(), bytes)
                    .unwrap();
            }
            Key::Instance(k) => {
                w.open_table(INSTANCES).unwrap().insert(*k, bytes).unwrap();
            }
            Key::Step(i, s) => {
                w.open_table(STEPS)
                    .unwrap()
                    .insert((*i, s.as_str()), bytes)
                    .unwrap();
            }
            Key::Event(i, s) => {
                w.open_table(EVENTS)
                    .unwrap()
                    .insert((*i, *s), bytes)
                    .unwrap();
            }
            Key::Dlq(k) => {
                w.open_table(DLQ).unwrap().insert(*k, bytes).unwrap();
            }
        }
    }
    w.commit().unwrap();
}

/// Opens the file and reads everything through the `Store` API, tolerating typed errors.
/// Returns whether the open succeeded and how many reads failed.
fn open_and_read(path: &Path) -> (bool, usize) {
    let store = match RedbStore::open(path, RedbOptions::default()) {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            return (false, 0);
        }
    };
    let mut failed = 0usize;
    let mut note = |r: Result<(), StoreError>| {
        if let Err(e) = r {
            let _ = e.to_string();
            failed += 1;
        }
    };
    futures::executor::block_on(async {
        note(store.list_definitions().await.map(drop));
        note(
            store
                .list_instances(&InstanceQuery::default())
                .await
                .map(drop),
        );
        note(store.list_dlq(&DlqQuery::default()).await.map(drop));
        note(store.stats().await.map(drop));
        note(store.next_due(&[Arc::from("h")]).await.map(drop));
        let ids: Vec<u128> = ROWS
            .iter()
            .filter_map(|r| match r.key {
                Key::Instance(i) => Some(i),
                _ => None,
            })
            .collect();
        for i in ids {
            let id = InstanceId::from_u128(i);
            note(store.get_instance(id).await.map(drop));
            note(store.load_instance(id).await.map(drop));
            note(store.list_steps(id).await.map(drop));
            note(store.list_queue(id).await.map(drop));
            note(store.list_events(id, None, 1_000).await.map(drop));
        }
        store.close().await.unwrap();
    });
    (true, failed)
}

proptest! {
    // Each case copies, writes and opens a file: fewer cases.
    #![proptest_config(ProptestConfig { cases: fuzz_guard::cases(100), ..ProptestConfig::default() })]

    /// The fixture with one row's value replaced by a mutation of it (or of another row),
    /// opened and read whole: every call gives `Ok` or a typed error.
    #[test]
    fn a_file_with_a_damaged_row_opens_and_reads_or_errs(
        row in 0usize..10_000,
        source in 0usize..10_000,
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let row = ROWS[row % ROWS.len()].clone();
        let bytes = mutate(&ROWS[source % ROWS.len()].bytes, &muts);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.redb");
        std::fs::copy(fixture(), &path).unwrap();
        write_row(&path, &row, &bytes);
        let what = format!("the fixture with {:?} replaced by {:02x?}", row.key, &bytes[..bytes.len().min(64)]);
        guarded(&what, move || open_and_read(&path));
    }
}

/// A damaged instance row: the store opens, and reading that instance is `Corrupt` while
/// the other instances still read.
#[test]
fn a_damaged_instance_row_is_corrupt_and_the_rest_reads() {
    let row = ROWS
        .iter()
        .find(|r| r.record == Record::Instance)
        .unwrap()
        .clone();
    let Key::Instance(damaged) = row.key else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.redb");
    std::fs::copy(fixture(), &path).unwrap();
    write_row(&path, &row, &[0xc1]);
    let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
    futures::executor::block_on(async {
        let got = store.get_instance(InstanceId::from_u128(damaged)).await;
        assert!(matches!(got, Err(StoreError::Corrupt(_))), "{got:?}");
        let other = ROWS
            .iter()
            .find_map(|r| match r.key {
                Key::Instance(i) if i != damaged => Some(i),
                _ => None,
            })
            .unwrap();
        assert!(
            store
                .get_instance(InstanceId::from_u128(other))
                .await
                .unwrap()
                .is_some()
        );
        store.close().await.unwrap();
    });
}
