//! DLQ records, events and instance listings.

use super::fixtures::{
    at, create, create_bare, dlq_record, event, iid, next, ok, snapshot, start, update, wf, wf2,
};
use crate::model::{DlqId, EventKind, InstanceId, InstanceStatus, Payload};
use crate::store::{DlqQuery, InstanceQuery, Store};
use std::collections::HashSet;

/// DLQ records get unique ids from the store, are readable one by one, listed in id order
/// with filters and paging, shown in the instance snapshot, removed by a transition, and
/// their ids are never reused.
pub async fn dlq_records<S: Store>(store: S) {
    create(&store, start(iid(1), at(0), &[])).await;
    let mut other = start(iid(2), at(0), &[]);
    other.instance.workflow_id = wf2();
    create(&store, other).await;
    ok(
        update(&store, iid(1), |s| {
            let mut t = next(s, at(10));
            t.instance.status = InstanceStatus::Dlq;
            t.dlq_insert.push(dlq_record(iid(1), &wf(), "a"));
            t.dlq_insert.push(dlq_record(iid(1), &wf(), "b"));
            t
        })
        .await,
        "insert two DLQ records",
    );
    ok(
        update(&store, iid(2), |s| {
            let mut t = next(s, at(20));
            t.dlq_insert.push(dlq_record(iid(2), &wf2(), "c"));
            t
        })
        .await,
        "insert one DLQ record",
    );
    let all = ok(store.list_dlq(&DlqQuery::default()).await, "list_dlq");
    assert_eq!(all.next, None, "one page");
    let ids: Vec<DlqId> = all.items.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ordered by id, unique: {ids:?}"
    );
    let steps: Vec<String> = all
        .items
        .iter()
        .map(|r| r.record.step.to_string())
        .collect();
    assert_eq!(steps, vec!["a", "b", "c"], "ids follow commit order here");
    let first = &all.items[0];
    assert_eq!(
        first.created_at,
        at(10),
        "created_at is the transition time"
    );
    assert_eq!(
        first.record,
        dlq_record(iid(1), &wf(), "a"),
        "contents kept"
    );
    assert_eq!(
        ok(store.get_dlq(first.id).await, "get_dlq"),
        Some(first.clone())
    );
    assert_eq!(
        ok(store.get_dlq(DlqId(ids[2].0 + 1_000)).await, "get_dlq"),
        None,
        "unknown id"
    );
    let mut snap_dlq = snapshot(&store, iid(1)).await.dlq;
    snap_dlq.sort_by_key(|r| r.id);
    assert_eq!(
        snap_dlq,
        all.items[..2].to_vec(),
        "the snapshot holds its records"
    );

    // Paging.
    let mut paged = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = ok(
            store
                .list_dlq(&DlqQuery {
                    after,
                    limit: 2,
                    ..DlqQuery::default()
                })
                .await,
            "list_dlq page",
        );
        assert!(page.items.len() <= 2, "page size respected");
        paged.extend(page.items.iter().map(|r| r.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(paged, ids, "paging visits every record once, in order");

    // Filters.
    let by_instance = ok(
        store
            .list_dlq(&DlqQuery {
                instance_id: Some(iid(2)),
                ..DlqQuery::default()
            })
            .await,
        "list_dlq",
    );
    assert_eq!(by_instance.items.len(), 1);
    assert_eq!(&*by_instance.items[0].record.step, "c");
    let by_wf = ok(
        store
            .list_dlq(&DlqQuery {
                workflow_id: Some(wf()),
                ..DlqQuery::default()
            })
            .await,
        "list_dlq",
    );
    assert_eq!(by_wf.items.len(), 2);

    // Delete through a transition; a new record gets a new id.
    let gone = ids[0];
    ok(
        update(&store, iid(1), move |s| {
            let mut t = next(s, at(30));
            t.instance.status = InstanceStatus::Running;
            t.dlq_delete.push(gone);
            t.events.push(event(EventKind::DlqRequeued, Some("a")));
            t
        })
        .await,
        "delete a DLQ record",
    );
    assert_eq!(ok(store.get_dlq(gone).await, "get_dlq"), None, "deleted");
    assert_eq!(snapshot(&store, iid(1)).await.dlq.len(), 1);
    ok(
        update(&store, iid(1), |s| {
            let mut t = next(s, at(40));
            t.dlq_insert.push(dlq_record(iid(1), &wf(), "d"));
            t
        })
        .await,
        "insert after delete",
    );
    let now_ids: HashSet<DlqId> = ok(store.list_dlq(&DlqQuery::default()).await, "list_dlq")
        .items
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(now_ids.len(), 3);
    assert!(!now_ids.contains(&gone), "a deleted id is never reused");
    assert!(
        now_ids.iter().all(|id| ids.contains(id) || *id > ids[2]),
        "new ids are fresh: {now_ids:?}"
    );
}

/// Events get a store-wide sequence increasing in commit order, are listed per instance
/// in sequence order with `after_seq` paging and a limit, and keep every field.
pub async fn events_sequence<S: Store>(store: S) {
    create(&store, start(iid(1), at(0), &[])).await;
    create(&store, start(iid(2), at(1), &[])).await;
    for round in 0..3_i64 {
        for n in [1_u128, 2] {
            ok(
                update(&store, iid(n), move |s| {
                    let mut t = next(s, at(10 + round));
                    let mut e = event(EventKind::ConditionCheck, Some("cond"));
                    e.attempt = Some(u32::try_from(round).unwrap_or_default());
                    e.detail = Some(Payload::new(serde_json::json!({ "round": round })));
                    t.events.push(e);
                    t.events.push(event(EventKind::SavePointReached, None));
                    t
                })
                .await,
                "append events",
            );
        }
    }
    let e1 = ok(store.list_events(iid(1), None, 0).await, "list_events");
    let e2 = ok(store.list_events(iid(2), None, 0).await, "list_events");
    assert_eq!(e1.len(), 7, "started + 3 rounds of 2");
    assert_eq!(e2.len(), 7);
    assert!(
        e1.iter().all(|e| e.instance_id == iid(1)),
        "per-instance listing"
    );
    assert!(e1.windows(2).all(|w| w[0].seq < w[1].seq), "increasing seq");
    // Commit order across instances: round r of instance 1 before round r of instance 2.
    for r in 0..3 {
        assert!(e1[1 + 2 * r].seq < e2[1 + 2 * r].seq, "commit order");
        if r < 2 {
            assert!(e2[2 + 2 * r].seq < e1[3 + 2 * r].seq, "commit order");
        }
    }
    let all: HashSet<u64> = e1.iter().chain(e2.iter()).map(|e| e.seq).collect();
    assert_eq!(all.len(), 14, "sequence numbers are unique store-wide");
    let e = &e1[3];
    assert_eq!(e.kind, EventKind::ConditionCheck);
    assert_eq!(e.step.as_deref(), Some("cond"));
    assert_eq!(e.attempt, Some(1));
    assert_eq!(e.at, at(11));
    assert_eq!(
        e.detail.as_ref().map(Payload::value),
        Some(&serde_json::json!({ "round": 1 }))
    );
    let after = ok(
        store.list_events(iid(1), Some(e1[2].seq), 0).await,
        "list_events",
    );
    assert_eq!(
        after,
        e1[3..].to_vec(),
        "after_seq skips up to and including it"
    );
    let limited = ok(
        store.list_events(iid(1), Some(e1[0].seq), 2).await,
        "list_events",
    );
    assert_eq!(limited, e1[1..3].to_vec(), "limit respected");
    let none = ok(
        store.list_events(iid(1), Some(e1[6].seq), 0).await,
        "list_events",
    );
    assert!(none.is_empty(), "nothing after the last");
    assert!(
        ok(store.list_events(iid(9), None, 0).await, "list_events").is_empty(),
        "unknown instance has no events"
    );
}

/// Instance listings are ordered by id, filter by workflow and status, page with the
/// `after` cursor, and treat a limit of 0 as the maximum.
pub async fn list_instances<S: Store>(store: S) {
    let mut expected_all = Vec::new();
    for n in 1..=25_u128 {
        // Created out of id order.
        let id = iid(((n * 7) % 25) + 1);
        let workflow = if n % 2 == 0 { wf() } else { wf2() };
        let status = if n % 3 == 0 {
            InstanceStatus::Completed
        } else {
            InstanceStatus::Running
        };
        create_bare(
            &store,
            id,
            &workflow,
            status,
            at(i64::try_from(n).unwrap_or(0)),
        )
        .await;
        expected_all.push((id, workflow, status));
    }
    expected_all.sort_by_key(|(id, _, _)| *id);
    let all_ids: Vec<InstanceId> = expected_all.iter().map(|(id, _, _)| *id).collect();

    let first_page = ok(
        store.list_instances(&InstanceQuery::default()).await,
        "list_instances",
    );
    let ids0: Vec<InstanceId> = first_page.items.iter().map(|r| r.id).collect();
    assert_eq!(ids0, all_ids, "limit 0 means the maximum; ordered by id");
    assert_eq!(first_page.next, None);

    let collect = |q: InstanceQuery| {
        let store = &store;
        async move {
            let mut out = Vec::new();
            let mut q = q;
            for _ in 0..100 {
                let page = ok(store.list_instances(&q).await, "list_instances");
                assert!(page.items.len() <= q.limit, "page size respected");
                out.extend(
                    page.items
                        .iter()
                        .map(|r| (r.id, r.workflow_id.clone(), r.status)),
                );
                match page.next {
                    Some(n) => q.after = Some(n),
                    None => return out,
                }
            }
            panic!("paging did not end")
        }
    };
    let paged = collect(InstanceQuery {
        limit: 10,
        ..InstanceQuery::default()
    })
    .await;
    assert_eq!(paged, expected_all, "pages of 10 visit every instance once");

    let only_wf = collect(InstanceQuery {
        workflow_id: Some(wf()),
        limit: 4,
        ..InstanceQuery::default()
    })
    .await;
    let expect_wf: Vec<_> = expected_all
        .iter()
        .filter(|(_, w, _)| *w == wf())
        .cloned()
        .collect();
    assert_eq!(only_wf, expect_wf, "workflow filter");

    let done = collect(InstanceQuery {
        workflow_id: Some(wf2()),
        status: Some(InstanceStatus::Completed),
        limit: 3,
        ..InstanceQuery::default()
    })
    .await;
    let expect_done: Vec<_> = expected_all
        .iter()
        .filter(|(_, w, s)| *w == wf2() && *s == InstanceStatus::Completed)
        .cloned()
        .collect();
    assert!(!expect_done.is_empty());
    assert_eq!(done, expect_done, "workflow and status filters");

    let after_mid = ok(
        store
            .list_instances(&InstanceQuery {
                after: Some(all_ids[19]),
                ..InstanceQuery::default()
            })
            .await,
        "list_instances",
    );
    let rest: Vec<InstanceId> = after_mid.items.iter().map(|r| r.id).collect();
    assert_eq!(rest, all_ids[20..].to_vec(), "after is exclusive");
}
