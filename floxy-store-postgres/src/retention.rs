//! Retention (`cleanup`) and partition maintenance. See the crate docs, "Partitioning and
//! retention".

use crate::error::map_sqlx;
use crate::{Layout, PostgresStore};
use floxy_core::model::Timestamp;
use floxy_core::store::StoreError;
use sqlx::{Executor, Row};

/// Old terminal instances removed per cleanup transaction.
pub const CLEANUP_CHUNK: usize = 1_000;
/// Instances created before the cutoff read per pass (one slice of the creation-time
/// index; the old terminal ones among them are removed).
pub const CLEANUP_SCAN: usize = 100_000;
/// Upper bound on the passes of one [`floxy_core::store::Store::cleanup`] call (a later call
/// continues).
pub const MAX_CLEANUP_PASSES: usize = 1_000;
/// Lock timeout of a partition drop (a busy partition is left for the next cleanup).
const DROP_LOCK_TIMEOUT: &str = "5s";

/// The partitioned tables.
pub(crate) const PARTITIONED_TABLES: [&str; 2] = ["workflow_steps", "workflow_events"];

pub(crate) async fn cleanup(
    store: &PostgresStore,
    older_than: Timestamp,
) -> Result<u64, StoreError> {
    if store.layout().await? == Some(Layout::Partitioned) {
        drop_partitions(store, older_than).await?;
    }
    let scan = i64::try_from(CLEANUP_SCAN).unwrap_or(i64::MAX);
    let mut removed = 0_u64;
    // The cursor: the last (created_at, id) of the previous slice.
    let mut after = (i64::MIN, uuid::Uuid::nil());
    for _ in 0..MAX_CLEANUP_PASSES {
        let row = sqlx::query(&store.q().cleanup_collect)
            .bind(older_than.as_millis())
            .bind(scan)
            .bind(after.0)
            .bind(after.1)
            .fetch_one(store.pool())
            .await
            .map_err(map_sqlx)?;
        let victims: Vec<uuid::Uuid> = row.try_get(0).map_err(map_sqlx)?;
        let seen: i64 = row.try_get(1).map_err(map_sqlx)?;
        let last: (Option<i64>, Option<uuid::Uuid>) = (
            row.try_get(2).map_err(map_sqlx)?,
            row.try_get(3).map_err(map_sqlx)?,
        );
        for chunk in victims.chunks(CLEANUP_CHUNK) {
            let n: i64 = sqlx::query_scalar(&store.q().cleanup)
                .bind(older_than.as_millis())
                .bind(chunk)
                .fetch_one(store.pool())
                .await
                .map_err(map_sqlx)?;
            removed += u64::try_from(n).unwrap_or(0);
        }
        // Done: the slice reached the end of the range (instances busy in a concurrent
        // commit were skipped and are left for the next call).
        match last {
            (Some(c), Some(id)) if seen >= scan => after = (c, id),
            _ => break,
        }
    }
    Ok(removed)
}

/// The exclusive upper bound of a range partition from `pg_get_expr(relpartbound)`, e.g.
/// `FOR VALUES FROM ('1717200000000') TO ('1717286400000')`; `None` for the default
/// partition or anything unexpected.
pub(crate) fn upper_bound(expr: &str) -> Option<i64> {
    let rest = &expr[expr.find(" TO (")? + 5..];
    let inner = &rest[..rest.find(')')?];
    inner.trim().trim_matches('\'').parse().ok()
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Partitions of `table` in the store's schema: (name, upper bound), default excluded.
async fn partitions(store: &PostgresStore, table: &str) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) \
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
          WHERE i.inhparent = to_regclass($1) ORDER BY c.relname",
    )
    .bind(format!("{}.{table}", store.quoted_schema()))
    .fetch_all(store.pool())
    .await
    .map_err(map_sqlx)?;
    let mut out = Vec::new();
    for row in &rows {
        let name: String = row.try_get(0).map_err(map_sqlx)?;
        let bound: Option<String> = row.try_get(1).map_err(map_sqlx)?;
        if let Some(upper) = bound.as_deref().and_then(upper_bound) {
            out.push((name, upper));
        }
    }
    Ok(out)
}

/// Drops every partition entirely older than `older_than` that holds no row of a kept
/// instance (non-terminal, `dlq`, or terminal and updated at or after the cutoff). Returns
/// the number of partitions dropped.
pub(crate) async fn drop_partitions(
    store: &PostgresStore,
    older_than: Timestamp,
) -> Result<u64, StoreError> {
    let schema = store.quoted_schema();
    let mut dropped = 0;
    for table in PARTITIONED_TABLES {
        for (name, upper) in partitions(store, table).await? {
            if upper > older_than.as_millis() {
                continue;
            }
            let part = format!("{schema}.{}", quote_ident(&name));
            let mut tx = store.pool().begin().await.map_err(map_sqlx)?;
            tx.execute(&*format!("SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"))
                .await
                .map_err(map_sqlx)?;
            if let Err(e) = tx
                .execute(&*format!("LOCK TABLE {part} IN ACCESS EXCLUSIVE MODE"))
                .await
            {
                tracing::info!(partition = %name, error = %e, "partition busy; kept for now");
                continue;
            }
            let kept: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {part} p \
                   JOIN {schema}.workflow_instances i ON i.id = p.instance_id \
                  WHERE NOT (i.status IN ('completed', 'failed', 'cancelled', 'aborted') \
                             AND i.updated_at < $1))"
            ))
            .bind(older_than.as_millis())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
            if kept {
                tracing::debug!(partition = %name, "partition holds a kept instance; kept");
                continue;
            }
            tx.execute(&*format!("DROP TABLE {part}"))
                .await
                .map_err(map_sqlx)?;
            tx.commit().await.map_err(map_sqlx)?;
            tracing::info!(partition = %name, "dropped an expired partition");
            dropped += 1;
        }
    }
    Ok(dropped)
}

pub(crate) async fn run_maintenance(store: &PostgresStore) -> Result<(), StoreError> {
    if store.layout().await? != Some(Layout::Partitioned) {
        return Ok(());
    }
    for table in PARTITIONED_TABLES {
        sqlx::query("SELECT partman.run_maintenance(p_parent_table => $1)")
            .bind(format!("{}.{table}", store.schema()))
            .execute(store.pool())
            .await
            .map_err(map_sqlx)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::upper_bound;

    #[test]
    fn parses_partition_bounds() {
        assert_eq!(
            upper_bound("FOR VALUES FROM ('1717200000000') TO ('1717286400000')"),
            Some(1_717_286_400_000)
        );
        assert_eq!(
            upper_bound("FOR VALUES FROM (1717200000000) TO (1717286400000)"),
            Some(1_717_286_400_000)
        );
        assert_eq!(upper_bound("DEFAULT"), None);
    }
}
