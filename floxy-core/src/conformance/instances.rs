//! Definitions, instance creation, versions, step compare-and-set and atomicity.

use super::fixtures::{
    assert_conflict, assert_stale, at, claim, create, definition, dlq_record, event, execute, iid,
    key, next, observe, ok, snapshot, start, step_run, stored_step, update, wf, wf2, write,
};
use crate::machine::TransitionError;
use crate::model::{
    EventKind, FencingToken, InstanceStatus, LeaseCheck, QueueOp, StepStatus, WorkKind,
};
use crate::store::{CreateOutcome, PutDefinition, Store, StoreError};

/// Definitions: first put creates, the same content again is unchanged, different content
/// under the same id is a conflict that changes nothing; get and list (ordered by id).
pub async fn definitions<S: Store>(store: S) {
    let d = definition("orders", 1, "charge");
    assert_eq!(
        ok(store.put_definition(&d).await, "put_definition"),
        PutDefinition::Created,
        "first put of a definition"
    );
    assert_eq!(
        ok(store.put_definition(&d).await, "put_definition"),
        PutDefinition::Unchanged,
        "second put of the same definition"
    );
    let changed = definition("orders", 1, "charge-v2");
    let r = store.put_definition(&changed).await;
    assert!(
        matches!(&r, Err(StoreError::DefinitionConflict(id)) if *id == d.id()),
        "put of different content under the same id: expected DefinitionConflict, got {r:?}"
    );
    assert_eq!(
        ok(store.get_definition(&d.id()).await, "get_definition"),
        Some(d.clone()),
        "a conflicting put must not change the stored definition"
    );
    let v2 = definition("orders", 2, "charge-v2");
    let a = definition("audit", 1, "log");
    ok(store.put_definition(&v2).await, "put_definition");
    ok(store.put_definition(&a).await, "put_definition");
    let ids: Vec<_> = ok(store.list_definitions().await, "list_definitions")
        .iter()
        .map(crate::model::WorkflowDefinition::id)
        .collect();
    assert_eq!(
        ids,
        vec![a.id(), d.id(), v2.id()],
        "list_definitions is ordered by id"
    );
    assert_eq!(
        ok(
            store.get_definition(&"missing-v1".into()).await,
            "get_definition"
        ),
        None,
        "unknown definition"
    );
}

/// A created instance is readable through every read: record, snapshot, steps (ordered by
/// creation time then name), queue and events (stamped with the transition's time).
pub async fn create_and_read<S: Store>(store: S) {
    let id = iid(1);
    let mut t = start(id, at(0), &[("b", "h"), ("a", "h")]);
    t.steps.push(write(
        step_run(id, "0-late", StepStatus::Pending, at(5)),
        None,
    ));
    t.instance.idempotency_key = Some("order-1".into());
    create(&store, t.clone()).await;

    let snap = snapshot(&store, id).await;
    assert_eq!(
        snap.instance, t.instance,
        "load_instance returns the record written"
    );
    assert_eq!(
        ok(store.get_instance(id).await, "get_instance"),
        Some(t.instance.clone()),
        "get_instance returns the record written"
    );
    let names: Vec<String> = ok(store.list_steps(id).await, "list_steps")
        .iter()
        .map(|r| r.step.to_string())
        .collect();
    assert_eq!(
        names,
        vec!["a", "b", "0-late"],
        "list_steps is ordered by creation time, then name"
    );
    assert_eq!(snap.steps.len(), 3, "snapshot holds every step run");
    let queue = ok(store.list_queue(id).await, "list_queue");
    assert_eq!(queue.len(), 2, "both items are queued");
    assert!(
        queue.iter().all(|i| i.lease.is_none() && i.attempt == 0),
        "new items are not leased: {queue:?}"
    );
    let events = ok(store.list_events(id, None, 0).await, "list_events");
    assert_eq!(events.len(), 1, "one event written");
    assert_eq!(events[0].kind, EventKind::WorkflowStarted);
    assert_eq!(events[0].instance_id, id);
    assert_eq!(
        events[0].at,
        at(0),
        "events are stamped with the transition time"
    );
    assert_eq!(
        ok(store.get_instance(iid(2)).await, "get_instance"),
        None,
        "unknown instance"
    );
    assert_eq!(
        ok(store.load_instance(iid(2)).await, "load_instance"),
        None,
        "unknown instance"
    );
}

/// A second start of the same workflow with the same idempotency key returns the existing
/// instance and writes nothing; the same key in another workflow is independent.
pub async fn idempotency_key<S: Store>(store: S) {
    let mut t = start(iid(1), at(0), &[("a", "h")]);
    t.instance.idempotency_key = Some("k".into());
    create(&store, t).await;

    let mut again = start(iid(2), at(1), &[("a", "h")]);
    again.instance.idempotency_key = Some("k".into());
    let out = ok(store.create_instance(again).await, "create_instance");
    assert_eq!(
        out,
        CreateOutcome::Existing(iid(1)),
        "same workflow and key"
    );
    assert_eq!(out.id(), iid(1));
    assert_eq!(
        ok(store.get_instance(iid(2)).await, "get_instance"),
        None,
        "a start answered with Existing must write nothing"
    );
    assert!(
        ok(store.list_queue(iid(2)).await, "list_queue").is_empty(),
        "a start answered with Existing must queue nothing"
    );
    assert_eq!(
        ok(store.find_by_idempotency_key(&wf(), "k").await, "find"),
        Some(iid(1))
    );
    assert_eq!(
        ok(store.find_by_idempotency_key(&wf(), "other").await, "find"),
        None
    );

    let mut other_wf = start(iid(3), at(2), &[]);
    other_wf.instance.workflow_id = wf2();
    other_wf.instance.idempotency_key = Some("k".into());
    create(&store, other_wf).await;
    assert_eq!(
        ok(store.find_by_idempotency_key(&wf2(), "k").await, "find"),
        Some(iid(3)),
        "keys are scoped by workflow"
    );
    assert_eq!(
        ok(store.find_by_idempotency_key(&wf(), "k").await, "find"),
        Some(iid(1))
    );
}

/// Creating an id that exists is a conflict and changes nothing.
pub async fn duplicate_create<S: Store>(store: S) {
    create(&store, start(iid(1), at(0), &[("a", "h")])).await;
    let before = observe(&store, iid(1)).await;
    let r = store
        .create_instance(start(iid(1), at(5), &[("b", "h")]))
        .await;
    assert_conflict(&r, "create_instance of an existing id");
    assert_eq!(
        observe(&store, iid(1)).await,
        before,
        "a refused create must change nothing"
    );
}

/// Every update must write `version + 1`: older, equal or skipped versions are conflicts
/// that change nothing. The applied transition is returned.
pub async fn version_check<S: Store>(store: S) {
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h")])).await;
    let before = observe(&store, id).await;
    for delta in [0_u64, 2, 5] {
        let r = update(&store, id, move |s| {
            let mut t = next(s, at(10));
            t.instance.version = s.instance.version + delta;
            t.instance.status = InstanceStatus::Completed;
            t.events.push(event(EventKind::WorkflowCompleted, None));
            t
        })
        .await;
        assert_conflict(&r, &format!("update writing version stored+{delta}"));
        assert_eq!(
            observe(&store, id).await,
            before,
            "a version conflict must change nothing"
        );
    }
    let applied = ok(
        update(&store, id, |s| {
            let mut t = next(s, at(10));
            t.instance.status = InstanceStatus::Cancelling;
            t
        })
        .await,
        "update with version + 1",
    );
    assert_eq!(
        applied.instance.version, 2,
        "the applied transition is returned"
    );
    let rec = ok(store.get_instance(id).await, "get_instance");
    assert_eq!(rec, Some(applied.instance), "the record is the one written");
    // A transition that claims to create is refused for an existing instance.
    let r = update(&store, id, |s| {
        let mut t = next(s, at(11));
        t.create = true;
        t
    })
    .await;
    assert_conflict(&r, "update with a creating transition");
}

/// Unknown instances are `NotFound`; a refusing transition function is `Rejected` and
/// writes nothing.
pub async fn update_errors<S: Store>(store: S) {
    let r = update(&store, iid(9), |s| next(s, at(1))).await;
    assert!(
        matches!(r, Err(StoreError::NotFound(_))),
        "update of an unknown instance: expected NotFound, got {r:?}"
    );
    create(&store, start(iid(1), at(0), &[("a", "h")])).await;
    let before = observe(&store, iid(1)).await;
    let r = store
        .update_instance(
            iid(1),
            Box::new(|_| {
                Err(TransitionError::InstanceTerminal {
                    status: InstanceStatus::Completed,
                })
            }),
        )
        .await;
    assert!(
        matches!(
            r,
            Err(StoreError::Rejected(
                TransitionError::InstanceTerminal { .. }
            ))
        ),
        "a refusing transition function: expected Rejected, got {r:?}"
    );
    assert_eq!(
        observe(&store, iid(1)).await,
        before,
        "a rejected update writes nothing"
    );
}

/// Step writes are compare-and-set on the stored status; `None` means "must not exist".
pub async fn step_compare_and_set<S: Store>(store: S) {
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h")])).await;
    let before = observe(&store, id).await;
    let cases: [(&str, Option<StepStatus>); 4] = [
        ("a", None),                        // exists
        ("a", Some(StepStatus::Running)),   // it is pending
        ("a", Some(StepStatus::Completed)), // it is pending
        ("b", Some(StepStatus::Pending)),   // does not exist
    ];
    for (step, expect) in cases {
        let r = update(&store, id, move |s| {
            let mut t = next(s, at(5));
            t.steps.push(write(
                step_run(id, step, StepStatus::Skipped, at(5)),
                expect,
            ));
            t
        })
        .await;
        assert_conflict(&r, &format!("step write on {step} expecting {expect:?}"));
        assert_eq!(
            observe(&store, id).await,
            before,
            "a failed CAS changes nothing"
        );
    }
    ok(
        update(&store, id, move |s| {
            let mut t = next(s, at(5));
            let mut a = stored_step(s, "a");
            a.status = StepStatus::Skipped;
            t.steps.push(write(a, Some(StepStatus::Pending)));
            t.steps
                .push(write(step_run(id, "b", StepStatus::Pending, at(5)), None));
            t
        })
        .await,
        "matching step writes",
    );
    let snap = snapshot(&store, id).await;
    assert_eq!(stored_step(&snap, "a").status, StepStatus::Skipped);
    assert_eq!(stored_step(&snap, "b").status, StepStatus::Pending);
}

/// A transition with one failing check (a step CAS, a stale lease, a version) leaves the
/// instance, its steps, queue, events and DLQ records and the store counters untouched; the
/// same transition with valid checks applies every write.
pub async fn atomic_apply<S: Store>(store: S) {
    let id = iid(1);
    create(&store, start(id, at(0), &[("a", "h"), ("b", "h")])).await;
    let claimed = claim(&store, "w1", &["h"], 1, at(1)).await;
    assert_eq!(claimed.len(), 1, "one item claimed");
    let token = claimed[0]
        .item
        .lease
        .as_ref()
        .map_or_else(|| panic!("a claimed item has a lease"), |l| l.token);
    assert_eq!(&*claimed[0].item.key.step, "a", "a is first (key order)");
    let before = observe(&store, id).await;

    // Everything a transition can write, guarded by the given checks.
    let build = move |s: &crate::model::InstanceSnapshot,
                      token: FencingToken,
                      b_expect: Option<StepStatus>,
                      version_delta: u64| {
        let mut t = next(s, at(2));
        t.instance.version = s.instance.version + version_delta;
        t.instance.completion_seq = 1;
        t.lease_check = Some(LeaseCheck {
            key: key(id, "a", WorkKind::Execute),
            token,
        });
        let mut a = stored_step(s, "a");
        a.status = StepStatus::Completed;
        a.completed_seq = Some(1);
        t.steps.push(write(a, Some(StepStatus::Running)));
        let mut b = stored_step(s, "b");
        b.status = StepStatus::Skipped;
        t.steps.push(write(b, b_expect));
        t.steps
            .push(write(step_run(id, "c", StepStatus::Pending, at(2)), None));
        t.queue
            .push(QueueOp::Delete(key(id, "a", WorkKind::Execute)));
        t.queue
            .push(QueueOp::Delete(key(id, "b", WorkKind::Execute)));
        t.queue.push(QueueOp::Upsert(execute(id, "c", "h", at(2))));
        t.events.push(event(EventKind::StepCompleted, Some("a")));
        t.events.push(event(EventKind::StepSkipped, Some("b")));
        t.dlq_insert.push(dlq_record(id, &wf(), "b"));
        t
    };

    let r = update(&store, id, move |s| {
        build(s, token, Some(StepStatus::Completed), 1)
    })
    .await;
    assert_conflict(&r, "transition whose last step CAS fails");
    assert_eq!(
        observe(&store, id).await,
        before,
        "a failed step CAS must leave everything untouched"
    );

    let stale = FencingToken(token.0 + 1_000_000);
    let r = update(&store, id, move |s| {
        build(s, stale, Some(StepStatus::Pending), 1)
    })
    .await;
    assert_stale(&r, "transition with a token that was never issued");
    assert_eq!(
        observe(&store, id).await,
        before,
        "a stale lease must leave everything untouched"
    );

    let r = update(&store, id, move |s| {
        build(s, token, Some(StepStatus::Pending), 2)
    })
    .await;
    assert_conflict(&r, "transition with a skipped version");
    assert_eq!(
        observe(&store, id).await,
        before,
        "a version conflict must leave everything untouched"
    );

    ok(
        update(&store, id, move |s| {
            build(s, token, Some(StepStatus::Pending), 1)
        })
        .await,
        "the valid transition",
    );
    let after = observe(&store, id).await;
    let snap = after
        .snapshot
        .clone()
        .unwrap_or_else(|| panic!("instance exists"));
    assert_eq!(snap.instance.version, 2);
    assert_eq!(snap.instance.completion_seq, 1);
    assert_eq!(stored_step(&snap, "a").status, StepStatus::Completed);
    assert_eq!(stored_step(&snap, "b").status, StepStatus::Skipped);
    assert_eq!(stored_step(&snap, "c").status, StepStatus::Pending);
    let keys: Vec<String> = after.queue.iter().map(|i| i.key.step.to_string()).collect();
    assert_eq!(keys, vec!["c"], "a and b deleted, c queued");
    assert_eq!(
        after.events.len(),
        before.events.len() + 2,
        "both events appended"
    );
    assert_eq!(after.dlq.len(), 1, "the DLQ record is written");
    assert_eq!(snap.dlq.len(), 1, "the snapshot shows the DLQ record");
}
