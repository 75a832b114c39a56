//! Stats and cleanup.

use super::fixtures::{
    at, claim, create, create_bare, dlq_record, event, iid, next, ok, start, status_counts, update,
    wf,
};
use crate::model::{EventKind, InstanceStatus};
use crate::store::{CreateOutcome, DlqQuery, Store};

fn counts(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = pairs.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect();
    v.sort();
    v
}

/// Stats count instances per status, ready and leased queue items, and DLQ records.
pub async fn stats<S: Store>(store: S) {
    let empty = ok(store.stats().await, "stats");
    assert_eq!(
        status_counts(&empty),
        Vec::new(),
        "empty store: no instances"
    );
    assert_eq!(
        (empty.queue_ready, empty.queue_leased, empty.dlq),
        (0, 0, 0),
        "empty store: no queue, no DLQ"
    );
    create(
        &store,
        start(iid(1), at(0), &[("a", "h"), ("b", "h"), ("c", "h")]),
    )
    .await;
    create_bare(&store, iid(2), &wf(), InstanceStatus::Completed, at(0)).await;
    let mut parked = start(iid(3), at(0), &[]);
    parked.instance.status = InstanceStatus::Dlq;
    parked.dlq_insert.push(dlq_record(iid(3), &wf(), "x"));
    create(&store, parked).await;
    assert_eq!(claim(&store, "w", &["h"], 1, at(1)).await.len(), 1);
    let s = ok(store.stats().await, "stats");
    assert_eq!(
        status_counts(&s),
        counts(&[("running", 1), ("completed", 1), ("dlq", 1)]),
        "instances per status"
    );
    assert_eq!(
        (s.queue_ready, s.queue_leased, s.dlq),
        (2, 1, 1),
        "ready, leased, DLQ"
    );
    ok(
        update(&store, iid(1), |snap| {
            let mut t = next(snap, at(2));
            t.instance.status = InstanceStatus::Cancelling;
            t
        })
        .await,
        "status change",
    );
    let s = ok(store.stats().await, "stats");
    assert_eq!(
        status_counts(&s),
        counts(&[("cancelling", 1), ("completed", 1), ("dlq", 1)]),
        "counts follow status changes"
    );
}

/// Cleanup removes terminal instances last updated before the cutoff, with their steps,
/// events, queue items, DLQ records and idempotency keys, and never touches non-terminal or
/// `dlq` instances or newer terminal ones.
pub async fn cleanup<S: Store>(store: S) {
    let cutoff = at(1_000);
    // Old terminal instances; the failed one carries everything an instance can own.
    create_bare(&store, iid(1), &wf(), InstanceStatus::Completed, at(10)).await;
    let mut failed = start(iid(2), at(20), &[("a", "gone")]);
    failed.instance.status = InstanceStatus::Failed;
    failed.instance.idempotency_key = Some("k2".into());
    failed.dlq_insert.push(dlq_record(iid(2), &wf(), "a"));
    failed.events.push(event(EventKind::WorkflowFailed, None));
    create(&store, failed).await;
    create_bare(&store, iid(3), &wf(), InstanceStatus::Cancelled, at(30)).await;
    create_bare(&store, iid(4), &wf(), InstanceStatus::Aborted, at(40)).await;
    // Became terminal through an update.
    create(&store, start(iid(11), at(0), &[])).await;
    ok(
        update(&store, iid(11), |s| {
            let mut t = next(s, at(500));
            t.instance.status = InstanceStatus::Completed;
            t
        })
        .await,
        "complete",
    );
    // Kept: terminal at the cutoff, and non-terminal however old.
    create_bare(&store, iid(5), &wf(), InstanceStatus::Completed, cutoff).await;
    create_bare(&store, iid(6), &wf(), InstanceStatus::Running, at(0)).await;
    let mut parked = start(iid(7), at(0), &[("p", "kept")]);
    parked.instance.status = InstanceStatus::Dlq;
    parked.instance.idempotency_key = Some("k7".into());
    parked.dlq_insert.push(dlq_record(iid(7), &wf(), "p"));
    create(&store, parked).await;
    create_bare(&store, iid(8), &wf(), InstanceStatus::RollingBack, at(0)).await;
    create_bare(&store, iid(9), &wf(), InstanceStatus::Cancelling, at(0)).await;
    let dlq_of_2 = ok(
        store
            .list_dlq(&DlqQuery {
                instance_id: Some(iid(2)),
                ..DlqQuery::default()
            })
            .await,
        "list_dlq",
    )
    .items;
    assert_eq!(dlq_of_2.len(), 1);

    let removed = ok(store.cleanup(cutoff).await, "cleanup");
    assert_eq!(removed, 5, "the five old terminal instances");
    for n in [1_u128, 2, 3, 4, 11] {
        let id = iid(n);
        assert_eq!(
            ok(store.get_instance(id).await, "get_instance"),
            None,
            "{id} removed"
        );
        assert_eq!(ok(store.load_instance(id).await, "load_instance"), None);
        assert!(
            ok(store.list_steps(id).await, "list_steps").is_empty(),
            "{id}: steps"
        );
        assert!(
            ok(store.list_queue(id).await, "list_queue").is_empty(),
            "{id}: queue"
        );
        assert!(
            ok(store.list_events(id, None, 0).await, "list_events").is_empty(),
            "{id}: events"
        );
    }
    assert_eq!(
        ok(store.get_dlq(dlq_of_2[0].id).await, "get_dlq"),
        None,
        "DLQ records of removed instances are removed"
    );
    assert!(
        claim(&store, "w", &["gone"], 10, at(2_000))
            .await
            .is_empty(),
        "queue items of removed instances are removed"
    );
    assert_eq!(
        ok(store.find_by_idempotency_key(&wf(), "k2").await, "find"),
        None,
        "idempotency keys of removed instances are removed"
    );
    let mut again = start(iid(20), at(2_000), &[]);
    again.instance.idempotency_key = Some("k2".into());
    assert_eq!(
        ok(store.create_instance(again).await, "create_instance"),
        CreateOutcome::Created(iid(20)),
        "a removed instance's key can start a new instance"
    );
    for n in [5_u128, 6, 7, 8, 9] {
        assert!(
            ok(store.get_instance(iid(n)).await, "get_instance").is_some(),
            "instance {n} must be kept"
        );
    }
    assert_eq!(
        ok(store.find_by_idempotency_key(&wf(), "k7").await, "find"),
        Some(iid(7))
    );
    let kept_dlq = ok(store.list_dlq(&DlqQuery::default()).await, "list_dlq").items;
    assert_eq!(kept_dlq.len(), 1, "the dlq instance keeps its record");
    assert_eq!(kept_dlq[0].record.instance_id, iid(7));
    assert_eq!(ok(store.list_queue(iid(7)).await, "list_queue").len(), 1);
    let s = ok(store.stats().await, "stats");
    assert_eq!(
        status_counts(&s),
        counts(&[
            ("completed", 1),
            ("running", 2),
            ("dlq", 1),
            ("rolling_back", 1),
            ("cancelling", 1)
        ]),
        "stats after cleanup"
    );
    assert_eq!(
        ok(store.cleanup(cutoff).await, "cleanup"),
        0,
        "nothing more to remove"
    );
    assert_eq!(
        ok(store.cleanup(cutoff.add_ms(1)).await, "cleanup"),
        1,
        "the instance updated at the old cutoff goes with a later one"
    );
}
