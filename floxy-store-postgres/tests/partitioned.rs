//! The pg_partman layout and the retention job on a real server with the extension:
//! old partitions that hold only expired terminal instances are dropped, partitions holding
//! a live (`running`, `dlq`) instance's rows stay however old, and no row of a live
//! instance is ever removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy_core::conformance::fixtures::{Observation, event, iid, observe, start, step_run, write};
use floxy_core::model::{EventKind, InstanceId, InstanceStatus, StepStatus, Timestamp};
use floxy_core::store::Store;
use floxy_store_postgres::testing::test_store;
use floxy_store_postgres::{Layout, PostgresStore};

const DAY_MS: i64 = 86_400_000;

/// Noon (UTC) `k` days ago.
fn day(k: i64) -> Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let now = i64::try_from(now).unwrap();
    let midnight = now - now.rem_euclid(DAY_MS);
    Timestamp(midnight - k * DAY_MS + DAY_MS / 2)
}

/// Creates instance `n` at `at` with two steps and their events, in `status`.
async fn make(store: &PostgresStore, n: u128, at: Timestamp, status: InstanceStatus) -> InstanceId {
    let id = iid(n);
    let mut t = start(id, at, &[("a", "h")]);
    t.steps
        .push(write(step_run(id, "b", StepStatus::Completed, at), None));
    t.events.push(event(EventKind::StepCompleted, Some("b")));
    t.instance.status = status;
    if status == InstanceStatus::Dlq {
        t.dlq_insert
            .push(floxy_core::conformance::fixtures::dlq_record(
                id,
                &floxy_core::conformance::fixtures::wf(),
                "a",
            ));
    }
    assert_eq!(
        store.create_instance(t).await.unwrap(),
        floxy_core::store::CreateOutcome::Created(id)
    );
    id
}

async fn partition_of_events(store: &PostgresStore, id: InstanceId) -> String {
    sqlx::query_scalar(&format!(
        "SELECT DISTINCT tableoid::regclass::text FROM \"{}\".workflow_events WHERE instance_id = $1",
        store.schema()
    ))
    .bind(id.0)
    .fetch_one(store.pool())
    .await
    .unwrap()
}

async fn exists(store: &PostgresStore, rel: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(rel)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

async fn partition_count(store: &PostgresStore) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM pg_inherits WHERE inhparent IN \
         ('\"{0}\".workflow_events'::regclass, '\"{0}\".workflow_steps'::regclass)",
        store.schema()
    ))
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_drops_live_instances() {
    let store = test_store(Layout::Partitioned).await;
    assert_eq!(store.layout().await.unwrap(), Some(Layout::Partitioned));
    store.run_maintenance().await.unwrap();

    // Day -5: a finished instance and a running one share a partition.
    let old_done = make(&store, 1, day(5), InstanceStatus::Completed).await;
    let old_live = make(&store, 2, day(5), InstanceStatus::Running).await;
    // Day -4: a parked (dlq) instance alone in its partition.
    let parked = make(&store, 3, day(4), InstanceStatus::Dlq).await;
    // Day -3: only a finished instance.
    let expired = make(&store, 4, day(3), InstanceStatus::Failed).await;
    // Day -1: finished after the cutoff.
    let recent = make(&store, 5, day(1), InstanceStatus::Completed).await;

    let p5 = partition_of_events(&store, old_live).await;
    let p4 = partition_of_events(&store, parked).await;
    let p3 = partition_of_events(&store, expired).await;
    assert_eq!(p5, partition_of_events(&store, old_done).await);
    assert!(
        !p5.ends_with("_default") && !p3.ends_with("_default"),
        "{p5} {p3}"
    );

    let kept: Vec<(InstanceId, Observation)> = {
        let mut v = Vec::new();
        for id in [old_live, parked, recent] {
            v.push((id, observe(&store, id).await));
        }
        v
    };
    let before = partition_count(&store).await;

    // Cutoff: midnight starting day -2.
    let cutoff = Timestamp(day(2).0 - DAY_MS / 2);
    assert_eq!(
        store.cleanup(cutoff).await.unwrap(),
        2,
        "the two old terminal instances"
    );

    assert!(
        exists(&store, &p5).await,
        "a partition holding a running instance stays"
    );
    assert!(
        exists(&store, &p4).await,
        "a partition holding a dlq instance stays"
    );
    assert!(
        !exists(&store, &p3).await,
        "a partition of expired instances only is dropped"
    );
    assert!(
        partition_count(&store).await < before,
        "old partitions were dropped"
    );
    for (id, obs) in kept {
        let mut now = observe(&store, id).await;
        // Counters are store-wide; compare everything of the instance itself.
        now.stats = obs.stats.clone();
        assert_eq!(now, obs, "instance {id} kept intact");
    }
    for id in [old_done, expired] {
        assert!(store.get_instance(id).await.unwrap().is_none());
        assert!(store.list_events(id, None, 0).await.unwrap().is_empty());
        assert!(store.list_steps(id).await.unwrap().is_empty());
    }
    // Nothing else goes, and maintenance still works after drops.
    assert_eq!(store.cleanup(cutoff).await.unwrap(), 0);
    store.run_maintenance().await.unwrap();
    // Rows written today still land in a real partition.
    let today = make(&store, 6, day(0), InstanceStatus::Running).await;
    assert!(
        !partition_of_events(&store, today)
            .await
            .ends_with("_default")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layouts_cannot_be_mixed() {
    let store = test_store(Layout::Plain).await;
    store.migrate(Layout::Plain).await.unwrap();
    let err = store.migrate(Layout::Partitioned).await.unwrap_err();
    assert!(err.to_string().contains("plain layout"), "{err}");
}
