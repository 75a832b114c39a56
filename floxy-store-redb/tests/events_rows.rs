//! Events are stored one row per transition (several events per row), except those of a
//! step whose row the claim or transition writes, which that row keeps (the `step_started`
//! event of a claim, any event of a step a transition changes); `list_events` must still page
//! through them exactly by sequence number, wherever `after_seq` and `limit` cut a row,
//! before and after a reopen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use floxy_core::conformance::fixtures::{claim, create, event, next, start, update};
use floxy_core::model::{EventKind, InstanceId, Timestamp};
use floxy_core::store::Store;
use floxy_store_redb::Durability;

const T0: Timestamp = Timestamp(1_700_000_000_000);

/// The sequence numbers of every event of `id`, checked to increase.
async fn increasing_seqs(store: &floxy_store_redb::RedbStore, id: InstanceId) -> Vec<u64> {
    let all: Vec<u64> = store
        .list_events(id, None, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "increasing: {all:?}");
    all
}

async fn check_pages(store: &floxy_store_redb::RedbStore, id: InstanceId, all: &[u64]) {
    assert_eq!(
        increasing_seqs(store, id).await,
        all,
        "every event, in order"
    );
    let first = *all.first().unwrap();
    let last = *all.last().unwrap();
    for after in (first - 1)..=(last + 1) {
        for limit in 1..=all.len() + 1 {
            let got: Vec<u64> = store
                .list_events(id, Some(after), limit)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            let want: Vec<u64> = all
                .iter()
                .copied()
                .filter(|s| *s > after)
                .take(limit)
                .collect();
            assert_eq!(got, want, "after {after}, limit {limit}");
        }
    }
    assert!(
        store
            .list_events(id, Some(u64::MAX), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[test]
fn events_page_exactly_across_rows() {
    let db = common::TempDb::new();
    futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        let a = InstanceId(uuid::Uuid::now_v7());
        let b = InstanceId(uuid::Uuid::now_v7());
        // Interleave two instances so their sequence numbers are not contiguous.
        let mut t = start(a, T0, &[("s1", "h")]);
        t.events.push(event(EventKind::StepStarted, Some("s1")));
        t.events.push(event(EventKind::StepCompleted, Some("s1")));
        create(&store, t).await;
        create(&store, start(b, T0, &[("s1", "h")])).await;
        for n in 1..=3_usize {
            store
                .update_instance(
                    a,
                    Box::new(move |s| {
                        let mut t = next(s, T0.add_ms(n as u64));
                        for _ in 0..n {
                            t.events.push(event(EventKind::StepFailed, Some("s1")));
                        }
                        Ok(t)
                    }),
                )
                .await
                .unwrap();
            store
                .update_instance(
                    b,
                    Box::new(move |s| {
                        let mut t = next(s, T0.add_ms(n as u64));
                        t.events.push(event(EventKind::StepFailed, Some("s1")));
                        Ok(t)
                    }),
                )
                .await
                .unwrap();
        }
        let all = increasing_seqs(&store, a).await;
        assert_eq!(all.len(), 3 + 1 + 2 + 3, "a's events: {all:?}");
        check_pages(&store, a, &all).await;
        store.close().await.unwrap();
        let store = common::open(&db.path, Durability::Immediate);
        check_pages(&store, a, &all).await;
        store.close().await.unwrap();
    });
}

async fn kinds(store: &floxy_store_redb::RedbStore, id: InstanceId) -> Vec<(EventKind, String)> {
    store
        .list_events(id, None, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.kind, e.step.as_deref().unwrap_or("").to_owned()))
        .collect()
}

/// The sequence numbers of the events `floxy_events` holds for `id` (the store is closed).
fn event_row_seqs(path: &std::path::Path, id: InstanceId) -> Vec<u64> {
    use redb::{ReadableDatabase, TableDefinition};
    // A row is a MessagePack array of events: [seq, at, kind, step, attempt, detail].
    #[derive(serde::Deserialize)]
    struct Ev(u64, Skip, Skip, Skip, Skip, Skip);
    type Skip = serde::de::IgnoredAny;
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let t = rtx
        .open_table(TableDefinition::<(u128, u64), &[u8]>::new("floxy_events"))
        .unwrap();
    let k = id.0.as_u128();
    let mut seqs = Vec::new();
    for row in t.range((k, 0)..=(k, u64::MAX)).unwrap() {
        let (_, v) = row.unwrap();
        let events: Vec<Ev> = rmp_serde::from_slice(v.value()).unwrap();
        seqs.extend(events.into_iter().map(|e| e.0));
    }
    seqs
}

#[test]
fn step_events_in_step_rows_page_with_the_others() {
    let db = common::TempDb::new();
    futures::executor::block_on(async {
        let store = common::open(&db.path, Durability::Immediate);
        let a = InstanceId(uuid::Uuid::now_v7());
        let b = InstanceId(uuid::Uuid::now_v7());
        create(&store, start(a, T0, &[("s1", "h1"), ("s2", "h2")])).await;
        create(&store, start(b, T0, &[("s1", "h1")])).await;
        // Claims of a/s1 and b/s1: their events go to the step rows.
        assert_eq!(claim(&store, "w", &["h1"], 10, T0).await.len(), 2);
        // a/s1 fails and is retried.
        update(&store, a, |s| {
            common::retry(s, "s1", "h1", T0.add_ms(1), T0.add_ms(2))
        })
        .await
        .unwrap();
        assert_eq!(claim(&store, "w", &["h2"], 10, T0.add_ms(2)).await.len(), 1);
        update(&store, a, |s| {
            let mut t = next(s, T0.add_ms(3));
            t.events.push(event(EventKind::StepCompleted, Some("s2")));
            t
        })
        .await
        .unwrap();
        // The retry: a second claim event in a/s1's row (b/s1 is still leased).
        let again = claim(&store, "w", &["h1"], 10, T0.add_ms(4)).await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].item.key.instance_id, a);
        update(&store, a, |s| {
            let mut t = next(s, T0.add_ms(5));
            t.events.push(event(EventKind::StepCompleted, Some("s1")));
            t
        })
        .await
        .unwrap();
        let want = vec![
            (EventKind::WorkflowStarted, String::new()),
            (EventKind::StepStarted, "s1".to_owned()),
            (EventKind::StepFailed, "s1".to_owned()),
            (EventKind::StepStarted, "s2".to_owned()),
            (EventKind::StepCompleted, "s2".to_owned()),
            (EventKind::StepStarted, "s1".to_owned()),
            (EventKind::StepCompleted, "s1".to_owned()),
        ];
        assert_eq!(kinds(&store, a).await, want);
        let b_want = vec![
            (EventKind::WorkflowStarted, String::new()),
            (EventKind::StepStarted, "s1".to_owned()),
        ];
        assert_eq!(kinds(&store, b).await, b_want);
        let all = increasing_seqs(&store, a).await;
        check_pages(&store, a, &all).await;
        store.close().await.unwrap();
        let store = common::open(&db.path, Durability::Immediate);
        assert_eq!(kinds(&store, a).await, want);
        assert_eq!(kinds(&store, b).await, b_want);
        check_pages(&store, a, &all).await;
        store.close().await.unwrap();
        // Only the events of transitions that did not write their step's row have rows of
        // their own: the start and the two completions (`next` writes the instance only).
        // The claims and the failure (whose transition rewrote s1's row) are in step rows.
        let rows = event_row_seqs(&db.path, a);
        assert_eq!(rows, vec![all[0], all[4], all[6]], "all: {all:?}");
    });
}
