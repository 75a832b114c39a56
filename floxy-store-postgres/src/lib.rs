//! A PostgreSQL [`Store`] for floxy: what production deployments run, with several worker
//! processes on several machines sharing one database.
//!
//! ```no_run
//! # async fn demo() -> Result<(), floxy_core::store::StoreError> {
//! use floxy_store_postgres::{Layout, PostgresConfig, PostgresStore};
//! let pool = sqlx::PgPool::connect("postgres://app@db/floxy")
//!     .await
//!     .map_err(|e| floxy_core::store::StoreError::Unavailable(e.to_string()))?;
//! let store = PostgresStore::with_config(pool, PostgresConfig::default().schema("floxy"))?;
//! store.migrate(Layout::Plain).await?; // explicit, idempotent
//! # Ok(()) }
//! ```
//!
//! Queries are checked at run time (no `DATABASE_URL` at compile time) and prepared once per
//! connection. The store owns no connection of its own: it uses the [`PgPool`] it is given
//! (plus, once [`Store::wait_for_work`] is used, one `LISTEN` connection).
//!
//! # Schema
//!
//! Everything lives in one schema (default `floxy`, see [`PostgresConfig::schema`]), with
//! Floxy's table names so operators can read them:
//!
//! | table | one row per | notes |
//! |---|---|---|
//! | `workflow_definitions` | definition (`"<name>-v<version>"`) | JSON of the definition; immutable |
//! | `workflow_instances` | instance | status, version, completion sequence, rollback state; `UNIQUE (workflow_id, idempotency_key)` |
//! | `workflow_steps` | step run | `retrying` ≠ `failed`, attempts, compensation attempts, completion sequence, decision |
//! | `workflow_queue` | pending piece of work | handler, `run_at`, priority, `order_key`, attempt, lease owner / fencing token / expiry; **deleted when done** |
//! | `workflow_events` | event | `seq` identity, transition time, kind, step, attempt, detail |
//! | `workflow_dlq` | dead letter | identity id (never reused), kind (`execute` / `compensate`) |
//! | `workflow_human_decisions` | human decision | append-only audit log (the step run's `decision` column is what the engine reads) |
//! | `floxy_meta` | setting | the layout (`plain` / `partitioned`) |
//!
//! plus the sequence `workflow_lease_tokens` (fencing tokens) and the function
//! `floxy_corrupt()`. Times are `bigint` milliseconds since the epoch, exactly the core's
//! [`Timestamp`] (`to_timestamp(created_at / 1000.0)` shows them). Step names are `COLLATE
//! "C"` so that SQL orders them like Rust does.
//!
//! **Migrations** are embedded with `sqlx::migrate!` (`migrations/plain` and
//! `migrations/partitioned`) and run only by an explicit [`PostgresStore::migrate`], which
//! creates the schema, opens a dedicated connection whose `search_path` is that schema (so
//! the fixed migration SQL lands in it, together with its own `_sqlx_migrations` table) and
//! applies the migrations of the chosen [`Layout`] under sqlx's advisory lock. Migrating an
//! existing schema to the other layout is refused.
//!
//! # Transactions
//!
//! * Every [`Transition`] is applied in one transaction, after `SELECT … FOR UPDATE` of its
//!   instance row; the snapshot is read under that lock, the transition function runs (pure
//!   and fast), its checks are verified, the writes are made and the transaction commits.
//!   Handlers never run inside a transaction and no connection is held while one runs: the
//!   runtime calls the store only to claim, heartbeat and commit.
//! * **Group commit.** `create_instance` and `update_instance` calls are queued and applied
//!   by [`PostgresConfig::committers`] committer tasks, up to
//!   [`PostgresConfig::max_commit_batch`] calls of distinct instances per transaction, with
//!   batched reads (`= ANY($1)`) and batched writes (`UNNEST`), and each caller is answered
//!   only after the `COMMIT`. One caller's rejected transition does not affect the others.
//!   See the `commit` module for the exact sequence. Under load this turns thousands of
//!   commits (and fsyncs) into tens.
//! * Lock order: committers lock instance rows in id order, then all queue rows of those
//!   instances in key order, and only then read the step runs; heartbeats lock queue rows in
//!   key order; claims lock queue rows without waiting (`SKIP LOCKED`) and then update the
//!   step runs of the rows they locked. So a claim can never change a step run between a
//!   committer's snapshot read and its write (the committer waits for a claim in flight on
//!   one of its rows; later claims skip its rows), and nothing waits in a cycle.
//!
//! # The claim query
//!
//! One statement (so one round trip and one implicit transaction) per claim: `SELECT * FROM
//! <schema>.floxy_claim(handlers, now, limit, owner)`, a PL/pgSQL function that
//! [`PostgresStore::migrate`] creates or replaces (a schema migrated by an older version
//! gets it on its next migrate; until then claims fail with a [`StoreError::Backend`] that
//! says so). Its planner settings (`enable_seqscan = off`, `enable_mergejoin = off`: key
//! lookups, see `docs/perf-notes.md`) are the function's `SET` clauses, so no `BEGIN` /
//! `SET LOCAL` / `COMMIT` is sent, and an autocommit statement can never be left idle in a
//! transaction holding row locks (the other hot-path transactions need
//! `idle_in_transaction_session_timeout` for that). What the function does:
//!
//! 1. for each requested handler (`unnest($handlers)`, i.e. `handler = ANY`), the first
//!    `limit` unleased items with `run_at <= now` in `(order_key, instance, step, kind)`
//!    order, read from the partial index `workflow_queue_ready_idx (handler, order_key,
//!    instance_id, step, kind_ord) WHERE lease_token IS NULL` (so finding work costs the
//!    same with 1 k or 1 M queued items), plus the items whose lease expired
//!    (`lease_expires_at <= now`, partial index `workflow_queue_leased_idx`): those are
//!    reclaimed by the same query and reported as `previous_lease_expired`;
//!    all with `FOR UPDATE SKIP LOCKED`;
//! 2. the first `limit` of those in claim order get a fencing token from the sequence
//!    `workflow_lease_tokens` (increasing in claim order), `attempt + 1`, the owner and
//!    `lease_expires_at = now + lease_ttl_ms` (the rows are addressed by `ctid = ANY(…)`, so
//!    the plan stays a TID scan whatever the planner thinks of the batch size);
//! 3. for `execute` items the step run becomes `running` (attempts, `started_at`) and a
//!    `step_started` event is inserted;
//! 4. the items come back with their step runs; an item without a step run raises
//!    `FX001` from `floxy_corrupt()`, which rolls the whole statement back
//!    ([`StoreError::Corrupt`]). The step run is the statement's snapshot, from before its
//!    own update in 3 (all parts of one statement see one snapshot); the store applies
//!    that update to it in Rust (`floxy_core::checks::start_run`, same condition), so the
//!    worker gets the run as stored without a second read.
//!
//! `order_key = run_at - priority * aging_ms_per_point` is priority-with-aging order, so
//! the index serves it directly. Heartbeats extend all of a worker's leases in one statement.
//! Finished queue rows are deleted by the transition that finishes them.
//!
//! # Wakeups
//!
//! A commit that queues work is followed by `NOTIFY floxy_work_<schema>`, sent after the
//! commit and coalesced (at most one per [`NOTIFY_COALESCE_MS`]); idle workers can wait for it
//! with [`Store::wait_for_work`], which the `floxy` engine does whenever its workers are
//! idle (a hint: it keeps polling
//! [`Store::next_due`] slowly as well).
//!
//! # Time and clock skew
//!
//! Every time the store writes or compares (`lease_expires_at = now + lease_ttl_ms`, a
//! reclaim of `lease_expires_at <= now`, `run_at <= now`, event times) is the `now` the
//! caller passes; the SQL never reads the database clock for them, so tests and the
//! conformance suite can drive the store with synthetic times. Processes on different
//! machines must still agree on time, or one whose clock runs ahead reclaims the live
//! leases of one whose clock runs behind. The chosen fix is **measure and correct in the
//! runtime**: [`Store::clock`] answers the database server's `clock_timestamp()` (one
//! `SELECT`), the `floxy` engine measures its offset from that clock at start and every
//! few seconds (half the round trip corrects the reading; slow samples are ignored) and
//! passes `own clock + offset` as `now`. All processes on one database then work in the
//! database's time, whatever their own clocks say; the residual error is bounded by half
//! the round trip of the best sample (milliseconds on a LAN), far below any lease TTL.
//! (The alternative, `clock_timestamp()` inside the lease SQL, would make the store ignore
//! the `now` it is given and break every test that drives time.)
//!
//! # Partitioning and retention
//!
//! [`Layout::Partitioned`] partitions `workflow_steps` and `workflow_events` (the tables that
//! grow with every step) daily by `created_at` with pg_partman 4.7 (`p_type => 'native'`,
//! `p_epoch => 'milliseconds'`, [`PostgresConfig::partition_days`] partitions premade
//! ahead and back, 30 and 30 by default, plus a default partition); their primary keys include `created_at`. The instance table stays
//! unpartitioned: it is the lock target, the uniqueness guard of ids and idempotency keys,
//! and the source of truth for which instances are live. Call
//! [`PostgresStore::run_maintenance`] daily (it runs `partman.run_maintenance`) to keep
//! premaking partitions. Partman's own retention is left **off**: it drops partitions by age
//! alone, which is how Floxy lost live instances.
//!
//! [`Store::cleanup`] is the retention job, for both layouts. It never removes anything of a
//! non-terminal or `dlq` instance:
//!
//! 1. (partitioned) every partition entirely older than the cutoff is locked and dropped
//!    **only if no row in it belongs to an instance that is kept** (non-terminal, `dlq`, or
//!    terminal but updated at or after the cutoff); partitions holding a live instance's
//!    rows stay, however old;
//! 2. terminal instances last updated before the cutoff are found by walking the instances
//!    created before the cutoff (an instance updated before it was created before it) in
//!    `(created_at, id)` order through the index `workflow_instances_created_idx`, in
//!    slices of [`CLEANUP_SCAN`] (at most [`MAX_CLEANUP_PASSES`] per call), and deleted
//!    with all their rows (steps, events, queue, DLQ, decisions), in chunks of
//!    [`CLEANUP_CHUNK`] instances per transaction, each re-checked under `FOR UPDATE SKIP
//!    LOCKED` (instances locked by a concurrent commit are left for the next call). A call
//!    reads every instance created before the cutoff once, the kept ones included.
//!
//! The instance table deliberately has no index on `updated_at` or `status` (not even a
//! partial index whose predicate reads `status`, which the terminal index of the first
//! schema was): every transition writes `updated_at` and the last one `status`, and with no
//! indexed column changing, PostgreSQL updates the row in place (a HOT update, no index
//! writes), including the terminal one. Unchanged JSON columns (instance and step inputs,
//! fork branches) are not even sent: `coalesce($new, stored)` keeps them. New pages of
//! `workflow_instances` (and, in the plain layout, `workflow_steps`) are filled to 50 %, so
//! that a group commit finishing the instances of one page finds room for their new
//! versions there.
//!
//! # Replication and failover
//!
//! The store keeps no state outside the database, so after a failover the engines only need
//! to reach the new primary: through a proxy or DNS name re-pointed at it, or a multi-host
//! URL with `target_session_attrs=read-write` (`postgres://app@db1,db2/floxy?target_session_attrs=read-write`).
//! Calls into the dead primary fail (or time out after [`PostgresConfig::call_timeout_ms`])
//! as retryable [`StoreError::Unavailable`]; the engine retries them, and work whose commit
//! never came back is redone once its lease expires. What survives depends on the
//! replication mode (both checked by `floxy-chaos`'s `tests/failover.rs`: the primary stopped
//! with `pg_ctl stop -m immediate` a second after its WAL stream was cut, the standby
//! promoted):
//!
//! * **Synchronous** (`synchronous_standby_names` naming the standby, `synchronous_commit =
//!   on` or stricter): a commit is acknowledged only once the standby has flushed it, so
//!   nothing acknowledged is lost — every instance whose start returned and every
//!   transition the store acknowledged is on the new primary. While the standby is
//!   unreachable, commits wait (and time out as `Unavailable`); they are not acknowledged.
//!   Configure the promoted server so it does not wait for a standby it does not have.
//! * **Asynchronous**: the primary acknowledges commits the standby may not have received;
//!   a failover rolls the database back to the standby's last replayed point. An operator
//!   must expect:
//!   * acknowledged transitions vanish: steps recorded as completed are pending or running
//!     again and are **redone** (their handlers called again, with the same idempotency
//!     keys — side effects must be idempotent, as for any redelivery); the attempt counts
//!     of the vanished attempts are gone too, so a step's handler may be called more than
//!     `max_retries + 1` times in all;
//!   * instances whose start was acknowledged can vanish entirely (`Engine::start`
//!     returned an id that no longer exists); side effects their handlers already made are
//!     not compensated by anyone, since no record of them survives: reconcile them from
//!     the callers' side (e.g. restart with the same idempotency key);
//!   * acknowledged operator commands can vanish as well: a cancel whose compensations
//!     already ran (their side effects are real) may be forgotten, and the instance goes
//!     on to complete; repeat such commands after an asynchronous failover;
//!   * what survives is consistent: the engine never acts on a state the database does not
//!     hold (every transition is computed under the row lock from what the new primary
//!     has), leases and fencing tokens are re-checked there, nothing is left stuck — every
//!     surviving instance finishes, and the invariants of the chaos validators hold.
//!
//!   Fencing tokens come from the sequence `workflow_lease_tokens`; a promoted standby
//!   continues from its own (WAL-logged, pre-allocated) position, which is ahead of every
//!   token it replicated but may be behind tokens the old primary handed out in the lost
//!   WAL. A commit is fenced by the token alone, so a worker still running an item under
//!   such a token could have its result accepted if the new primary happens to lease the
//!   same item with the same token again (unlikely; its heartbeat also reports the lease
//!   lost when the owner differs, which usually stops it first). To rule it out, advance
//!   the sequence by a margin on the new primary before the workers reconnect
//!   (`SELECT setval('floxy.workflow_lease_tokens', nextval('floxy.workflow_lease_tokens') + 1000000)`).
//!
//! # Choices where the contract is silent
//!
//! As in the memory store: an expired lease nobody reclaimed yet is still current; claiming
//! an `execute` item whose step run is not `pending`/`retrying`/`running` leases it without
//! touching the run; several writes to one step in a transition are checked in order;
//! a transition may only write its own instance's rows. Event sequence numbers are unique
//! and increase with commit order for the transitions of one instance (they are serialised
//! by its row lock); across instances committed concurrently by different transactions a
//! smaller number may become visible slightly after a larger one. Payloads are stored as
//! `jsonb`, so a JSON string containing `\u0000` is refused by PostgreSQL (as is a NUL in
//! any text), and object key order is not kept (the core does not depend on it).

mod codec;
mod commit;
mod error;
mod notify;
mod queries;
mod retention;
#[cfg(feature = "testing")]
pub mod testing;

pub use commit::{GroupCommitStats, MAX_PENDING_COMMITS};
pub use notify::{LISTEN_RECONNECT_MS, NOTIFY_COALESCE_MS};
pub use retention::{CLEANUP_CHUNK, CLEANUP_SCAN, MAX_CLEANUP_PASSES};

use async_trait::async_trait;
use commit::{Committer, Ctx};
use error::map_sqlx;
use floxy_core::eager::EagerClaim;
use floxy_core::model::{
    DlqId, DlqRecord, Event, InstanceId, InstanceRecord, InstanceSnapshot, InstanceStatus,
    QueueItem, StepRun, Timestamp, Transition, WorkflowDefinition, WorkflowId,
};
use floxy_core::store::{
    Capabilities, ClaimRequest, ClaimedItem, CreateOutcome, DlqQuery, InstanceQuery, LeaseRef,
    LeaseState, MAX_CLAIM_BATCH, MAX_PAGE_SIZE, Page, PutDefinition, Store, StoreError, StoreStats,
    TransitionFn, WorkWait,
};
use queries::Queries;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgPool, Row};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Default schema name.
pub const DEFAULT_SCHEMA: &str = "floxy";
/// Default largest number of `create_instance`/`update_instance` calls committed in one
/// transaction.
pub const DEFAULT_MAX_COMMIT_BATCH: usize = 512;
/// Default number of committer tasks (transactions in flight at once).
pub const DEFAULT_COMMITTERS: usize = 4;
/// Upper bound of [`PostgresConfig::max_commit_batch`].
pub const MAX_COMMIT_BATCH: usize = 10_000;
/// Upper bound of [`PostgresConfig::committers`].
pub const MAX_COMMITTERS: usize = 64;
/// Longest schema name (PostgreSQL identifiers have at most 63 bytes; the NOTIFY channel
/// adds a prefix).
pub const MAX_SCHEMA_LEN: usize = 48;
/// Default partitions premade ahead of (and kept before) today by the partitioned migration.
pub const DEFAULT_PARTITION_DAYS: u32 = 30;
/// Upper bound of the partition day counts.
pub const MAX_PARTITION_DAYS: u32 = 365;
/// Connections of the pool built by [`PostgresStore::connect`].
pub const DEFAULT_POOL_SIZE: u32 = 32;
/// Default deadline of one store call ([`PostgresConfig::call_timeout_ms`]).
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 30_000;
/// Smallest accepted [`PostgresConfig::call_timeout_ms`].
pub const MIN_CALL_TIMEOUT_MS: u64 = 100;
/// Largest accepted [`PostgresConfig::call_timeout_ms`] (one hour).
pub const MAX_CALL_TIMEOUT_MS: u64 = 3_600_000;

static PLAIN: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/plain");
static PARTITIONED: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/partitioned");

/// Table layout chosen at [`PostgresStore::migrate`] time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// Plain tables.
    Plain,
    /// `workflow_steps` and `workflow_events` partitioned daily with pg_partman (which must
    /// be installed on the server; the migration creates the extension in schema
    /// `partman`).
    Partitioned,
}

impl Layout {
    /// `plain` or `partitioned` (as stored in `floxy_meta`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Partitioned => "partitioned",
        }
    }
}

/// Settings of a [`PostgresStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// Schema holding every table (lowercase letters, digits and `_`, starting with a letter
    /// or `_`, at most [`MAX_SCHEMA_LEN`] bytes).
    pub schema: String,
    /// Largest number of calls committed in one transaction (1..=[`MAX_COMMIT_BATCH`]).
    pub max_commit_batch: usize,
    /// Committer tasks, i.e. group-commit transactions in flight at once
    /// (1..=[`MAX_COMMITTERS`]).
    pub committers: usize,
    /// Send `NOTIFY` when a commit queues work.
    pub notify: bool,
    /// Deadline of every store call but [`Store::cleanup`] (a claim, a heartbeat, a read, one
    /// group-commit transaction), in milliseconds
    /// ([`MIN_CALL_TIMEOUT_MS`]..=[`MAX_CALL_TIMEOUT_MS`]). A call past it fails with
    /// [`StoreError::Unavailable`] (retryable). Why: a connection that dies silently (a
    /// network partition, a proxy that stops forwarding) leaves the client waiting for an
    /// answer that never comes; without a deadline the worker waits forever (found by the
    /// chaos runs behind a proxy). A commit that times out has an unknown outcome, exactly as
    /// one whose connection dropped: a retry is checked again (version, fencing token).
    pub call_timeout_ms: u64,
    /// Partitioned layout: daily partitions premade ahead of today at migration
    /// (1..=[`MAX_PARTITION_DAYS`]; `run_maintenance` keeps partman's own premake count).
    pub partition_premake_days: u32,
    /// Partitioned layout: daily partitions created before today at migration
    /// (1..=[`MAX_PARTITION_DAYS`]); older rows go to the default partition.
    pub partition_history_days: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            max_commit_batch: DEFAULT_MAX_COMMIT_BATCH,
            committers: DEFAULT_COMMITTERS,
            notify: true,
            call_timeout_ms: DEFAULT_CALL_TIMEOUT_MS,
            partition_premake_days: DEFAULT_PARTITION_DAYS,
            partition_history_days: DEFAULT_PARTITION_DAYS,
        }
    }
}

impl PostgresConfig {
    /// Sets the schema.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
    /// Sets the largest group-commit batch (clamped to 1..=[`MAX_COMMIT_BATCH`]).
    #[must_use]
    pub fn max_commit_batch(mut self, n: usize) -> Self {
        self.max_commit_batch = n.clamp(1, MAX_COMMIT_BATCH);
        self
    }
    /// Sets the number of committer tasks (clamped to 1..=[`MAX_COMMITTERS`]).
    #[must_use]
    pub fn committers(mut self, n: usize) -> Self {
        self.committers = n.clamp(1, MAX_COMMITTERS);
        self
    }
    /// Sets the partitions made ahead of and before today by the partitioned migration
    /// (each clamped to 1..=[`MAX_PARTITION_DAYS`]).
    #[must_use]
    pub fn partition_days(mut self, premake: u32, history: u32) -> Self {
        self.partition_premake_days = premake.clamp(1, MAX_PARTITION_DAYS);
        self.partition_history_days = history.clamp(1, MAX_PARTITION_DAYS);
        self
    }
    /// Sets the deadline of one store call (clamped to
    /// [`MIN_CALL_TIMEOUT_MS`]..=[`MAX_CALL_TIMEOUT_MS`]).
    #[must_use]
    pub fn call_timeout_ms(mut self, ms: u64) -> Self {
        self.call_timeout_ms = ms.clamp(MIN_CALL_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS);
        self
    }
    /// Turns `NOTIFY` on commits on or off.
    #[must_use]
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }
}

fn valid_schema(s: &str) -> bool {
    let mut chars = s.chars();
    !s.is_empty()
        && s.len() <= MAX_SCHEMA_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with("pg_")
}

/// The PostgreSQL store. Cloning is cheap and shares the pool and the committers.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    config: PostgresConfig,
    quoted_schema: String,
    q: Arc<Queries>,
    committer: Arc<Committer>,
    notifier: Option<Arc<notify::Notifier>>,
    signal: notify::WorkSignal,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.committer.close();
        if let Some(n) = &self.notifier {
            n.close();
        }
        self.signal.close();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A store on `pool` in schema [`DEFAULT_SCHEMA`]. Does not touch the database; call
    /// [`PostgresStore::migrate`] once before use.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self::build(pool, PostgresConfig::default())
    }

    /// A store on `pool` with `config`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] for an invalid schema name.
    pub fn with_config(pool: PgPool, config: PostgresConfig) -> Result<Self, StoreError> {
        if !valid_schema(&config.schema) {
            return Err(StoreError::Backend(format!(
                "invalid schema name {:?}: use lowercase letters, digits and _ (at most {} bytes)",
                config.schema, MAX_SCHEMA_LEN
            )));
        }
        Ok(Self::build(pool, config))
    }

    /// Connects a pool of [`DEFAULT_POOL_SIZE`] connections to `url` and builds a store with
    /// `config`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the server cannot be reached; as
    /// [`PostgresStore::with_config`].
    pub async fn connect(url: &str, config: PostgresConfig) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url.parse().map_err(map_sqlx)?;
        let pool = PgPoolOptions::new()
            .max_connections(DEFAULT_POOL_SIZE)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(map_sqlx)?;
        Self::with_config(pool, config)
    }

    fn build(pool: PgPool, mut config: PostgresConfig) -> Self {
        config.max_commit_batch = config.max_commit_batch.clamp(1, MAX_COMMIT_BATCH);
        config.committers = config.committers.clamp(1, MAX_COMMITTERS);
        config.call_timeout_ms = config
            .call_timeout_ms
            .clamp(MIN_CALL_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS);
        let quoted_schema = format!("\"{}\"", config.schema);
        let q = Arc::new(Queries::new(&quoted_schema, config.call_timeout_ms));
        let channel = format!("floxy_work_{}", config.schema);
        let notifier = config
            .notify
            .then(|| notify::Notifier::new(pool.clone(), q.notify.clone(), channel.clone()));
        let ctx = Arc::new(Ctx {
            pool: pool.clone(),
            q: Arc::clone(&q),
            notifier: notifier.clone(),
            max_batch: config.max_commit_batch,
            call_timeout: Duration::from_millis(config.call_timeout_ms),
        });
        Self {
            inner: Arc::new(Inner {
                committer: Committer::new(ctx, config.committers),
                notifier,
                signal: notify::WorkSignal::new(channel),
                pool,
                quoted_schema,
                q,
                config,
            }),
        }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema name.
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.inner.config.schema
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// Creates the schema if needed and applies the embedded migrations of `layout`
    /// (idempotent; safe to call from several processes at once).
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the schema already holds the other layout or a migration
    /// fails (e.g. pg_partman missing for [`Layout::Partitioned`]);
    /// [`StoreError::Unavailable`] if the server cannot be reached.
    pub async fn migrate(&self, layout: Layout) -> Result<(), StoreError> {
        let cfg = &self.inner.config;
        let schema = &cfg.schema;
        let premake = cfg
            .partition_premake_days
            .clamp(1, MAX_PARTITION_DAYS)
            .to_string();
        let history = cfg
            .partition_history_days
            .clamp(1, MAX_PARTITION_DAYS)
            .to_string();
        let opts = (*self.inner.pool.connect_options()).clone().options([
            ("search_path", schema.as_str()),
            ("floxy.premake_days", premake.as_str()),
            ("floxy.history_days", history.as_str()),
        ]);
        let mut conn = sqlx::PgConnection::connect_with(&opts)
            .await
            .map_err(map_sqlx)?;
        let lock_key = format!("floxy-migrate-{schema}");
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(&lock_key)
            .execute(&mut conn)
            .await
            .map_err(map_sqlx)?;
        let result = async {
            conn.execute(&*format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                self.inner.quoted_schema
            ))
            .await
            .map_err(map_sqlx)?;
            if let Some(existing) = self.layout_on(&mut conn).await?
                && existing != layout.as_str()
            {
                return Err(StoreError::Backend(format!(
                    "schema {schema} holds the {existing} layout; cannot migrate it to {}",
                    layout.as_str()
                )));
            }
            let migrator = match layout {
                Layout::Plain => &PLAIN,
                Layout::Partitioned => &PARTITIONED,
            };
            migrator
                .run(&mut conn)
                .await
                .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
            // The store's functions, replaced by every migrate so that they match this
            // version of the store (existing schemas get them on their next migrate).
            conn.execute(&*self.inner.q.create_claim)
                .await
                .map_err(|e| StoreError::Backend(format!("creating floxy_claim: {e}")))?;
            Ok(())
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&lock_key)
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        result
    }

    async fn layout_on(&self, conn: &mut sqlx::PgConnection) -> Result<Option<String>, StoreError> {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass(quote_ident($1) || '.floxy_meta') IS NOT NULL")
                .bind(&self.inner.config.schema)
                .fetch_one(&mut *conn)
                .await
                .map_err(map_sqlx)?;
        if !exists {
            return Ok(None);
        }
        sqlx::query_scalar(&self.inner.q.layout)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_sqlx)
    }

    /// The layout of the migrated schema (`None` before [`PostgresStore::migrate`]).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] and other database errors.
    pub async fn layout(&self) -> Result<Option<Layout>, StoreError> {
        let mut conn = self.inner.pool.acquire().await.map_err(map_sqlx)?;
        Ok(match self.layout_on(&mut conn).await?.as_deref() {
            Some("plain") => Some(Layout::Plain),
            Some("partitioned") => Some(Layout::Partitioned),
            Some(other) => return Err(StoreError::Corrupt(format!("unknown layout {other:?}"))),
            None => None,
        })
    }

    /// Runs one store call under [`PostgresConfig::call_timeout_ms`].
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let ms = self.inner.config.call_timeout_ms;
        tokio::time::timeout(Duration::from_millis(ms), call)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "{what}: no answer from PostgreSQL within {ms} ms"
                )))
            })
    }

    /// Counters of the group committer (batches and calls so far).
    #[must_use]
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.inner.committer.stats()
    }

    /// Partitioned layout: runs `partman.run_maintenance` for the partitioned tables
    /// (premakes future partitions; never drops any). A no-op for the plain layout.
    ///
    /// # Errors
    /// Database errors.
    pub async fn run_maintenance(&self) -> Result<(), StoreError> {
        retention::run_maintenance(self).await
    }

    // ----- internal helpers used by the modules -----

    pub(crate) fn q(&self) -> &Queries {
        &self.inner.q
    }

    pub(crate) fn quoted_schema(&self) -> &str {
        &self.inner.quoted_schema
    }
}

fn page_limit(limit: usize) -> usize {
    if limit == 0 {
        MAX_PAGE_SIZE
    } else {
        limit.min(MAX_PAGE_SIZE)
    }
}

fn limit_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A page of at most `limit` of `items` (fetched with one extra row to learn whether more
/// follow); the cursor of the next page is that of the last item kept.
fn page_of<T, C>(mut items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> C) -> Page<T, C> {
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next }
}

#[async_trait]
impl Store for PostgresStore {
    fn capabilities(&self) -> Capabilities {
        floxy_core::store::Capabilities::new(true, true)
    }

    async fn put_definition(&self, def: &WorkflowDefinition) -> Result<PutDefinition, StoreError> {
        self.bounded("put_definition", async {
            let id = def.id();
            let json = codec::json_of(def)?;
            let done = sqlx::query(&self.q().put_definition)
                .bind(id.as_str())
                .bind(&def.name)
                .bind(i64::from(def.version))
                .bind(&json)
                .execute(self.pool())
                .await
                .map_err(map_sqlx)?;
            if done.rows_affected() == 1 {
                return Ok(PutDefinition::Created);
            }
            match self.get_definition(&id).await? {
                Some(stored) if stored == *def => Ok(PutDefinition::Unchanged),
                Some(_) => Err(StoreError::DefinitionConflict(id)),
                None => Err(StoreError::Unavailable(format!(
                    "definition {id} vanished while being registered"
                ))),
            }
        })
        .await
    }

    async fn get_definition(
        &self,
        id: &WorkflowId,
    ) -> Result<Option<WorkflowDefinition>, StoreError> {
        self.bounded("get_definition", async {
            let row: Option<sqlx::types::Json<WorkflowDefinition>> =
                sqlx::query_scalar(&self.q().get_definition)
                    .bind(id.as_str())
                    .fetch_optional(self.pool())
                    .await
                    .map_err(map_sqlx)?;
            Ok(row.map(|j| j.0))
        })
        .await
    }

    async fn list_definitions(&self) -> Result<Vec<WorkflowDefinition>, StoreError> {
        self.bounded("list_definitions", async {
            let rows: Vec<sqlx::types::Json<WorkflowDefinition>> =
                sqlx::query_scalar(&self.q().list_definitions)
                    .fetch_all(self.pool())
                    .await
                    .map_err(map_sqlx)?;
            Ok(rows.into_iter().map(|j| j.0).collect())
        })
        .await
    }

    async fn create_instance(&self, t: Transition) -> Result<CreateOutcome, StoreError> {
        self.inner.committer.create(t).await
    }

    async fn update_instance(
        &self,
        id: InstanceId,
        f: TransitionFn,
    ) -> Result<Transition, StoreError> {
        Ok(self.inner.committer.update(id, f, None).await?.0)
    }

    async fn update_instance_eager(
        &self,
        id: InstanceId,
        f: TransitionFn,
        eager: &EagerClaim,
    ) -> Result<(Transition, Vec<ClaimedItem>), StoreError> {
        let eager = (eager.limit > 0).then(|| eager.clone());
        self.inner.committer.update(id, f, eager).await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<ClaimedItem>, StoreError> {
        self.bounded("claim", async {
            let limit = req.limit.min(MAX_CLAIM_BATCH);
            if limit == 0 || req.handlers.is_empty() {
                return Ok(Vec::new());
            }
            let handlers: Vec<&str> = req.handlers.iter().map(|h| &**h).collect();
            let now = req.now;
            // One autocommit statement: one round trip (see `queries::CLAIM_FUNCTION`).
            let rows = sqlx::query(&self.q().claim)
                .bind(&handlers)
                .bind(now.as_millis())
                .bind(limit_i64(limit))
                .bind(&*req.owner)
                .fetch_all(self.pool())
                .await
                .map_err(error::map_claim)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let item = codec::queue_item(row, 0)?;
                let previous_lease_expired: bool = row.try_get(14).map_err(map_sqlx)?;
                let mut run = codec::step_run(row, 15)?;
                if floxy_core::checks::claim_starts_run(item.key.kind, run.status) {
                    floxy_core::checks::start_run(&mut run, item.attempt, now);
                }
                out.push(ClaimedItem {
                    item,
                    previous_lease_expired,
                    run,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn heartbeat(
        &self,
        owner: &str,
        leases: &[LeaseRef],
        now: Timestamp,
    ) -> Result<Vec<LeaseState>, StoreError> {
        self.bounded("heartbeat", async {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let mut ids = Vec::with_capacity(leases.len());
            let mut steps = Vec::with_capacity(leases.len());
            let mut kinds = Vec::with_capacity(leases.len());
            let mut tokens = Vec::with_capacity(leases.len());
            for l in leases {
                ids.push(l.key.instance_id.0);
                steps.push(l.key.step.to_string());
                kinds.push(l.key.kind.as_str());
                tokens.push(i64::try_from(l.token.0).unwrap_or(-1));
            }
            let mut tx = self
                .pool()
                .begin_with(self.q().begin_keyed.clone())
                .await
                .map_err(map_sqlx)?;
            let rows = sqlx::query(&self.q().heartbeat)
                .bind(ids)
                .bind(steps)
                .bind(kinds)
                .bind(tokens)
                .bind(owner)
                .bind(now.as_millis())
                .fetch_all(&mut *tx)
                .await
                .map_err(map_sqlx)?;
            tx.commit().await.map_err(map_sqlx)?;
            let mut held: HashMap<(uuid::Uuid, String, String, i64), LeaseState> = HashMap::new();
            for row in &rows {
                let key = (
                    row.try_get::<uuid::Uuid, _>(0).map_err(map_sqlx)?,
                    row.try_get::<String, _>(1).map_err(map_sqlx)?,
                    row.try_get::<String, _>(2).map_err(map_sqlx)?,
                    row.try_get::<i64, _>(3).map_err(map_sqlx)?,
                );
                let state = LeaseState::Held {
                    expires_at: Timestamp(row.try_get(4).map_err(map_sqlx)?),
                    cancel_requested: row.try_get(5).map_err(map_sqlx)?,
                };
                held.insert(key, state);
            }
            Ok(leases
                .iter()
                .map(|l| {
                    let key = (
                        l.key.instance_id.0,
                        l.key.step.to_string(),
                        l.key.kind.as_str().to_owned(),
                        i64::try_from(l.token.0).unwrap_or(-1),
                    );
                    held.get(&key).copied().unwrap_or(LeaseState::Lost)
                })
                .collect())
        })
        .await
    }

    async fn load_instance(&self, id: InstanceId) -> Result<Option<InstanceSnapshot>, StoreError> {
        self.bounded("load_instance", async {
            let mut tx = self.pool().begin().await.map_err(map_sqlx)?;
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(map_sqlx)?;
            let Some(row) = sqlx::query(&self.q().get_instance)
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_sqlx)?
            else {
                return Ok(None);
            };
            let instance = codec::instance(&row, 0)?;
            let steps = sqlx::query(&self.q().list_steps)
                .bind(id.0)
                .fetch_all(&mut *tx)
                .await
                .map_err(map_sqlx)?
                .iter()
                .map(|r| codec::step_run(r, 0))
                .collect::<Result<Vec<_>, _>>()?;
            let dlq = sqlx::query(&self.q().list_dlq_of)
                .bind(id.0)
                .fetch_all(&mut *tx)
                .await
                .map_err(map_sqlx)?
                .iter()
                .map(|r| codec::dlq_record(r, 0))
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await.map_err(map_sqlx)?;
            Ok(Some(InstanceSnapshot {
                instance,
                steps,
                dlq,
            }))
        })
        .await
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        self.bounded("get_instance", async {
            sqlx::query(&self.q().get_instance)
                .bind(id.0)
                .fetch_optional(self.pool())
                .await
                .map_err(map_sqlx)?
                .map(|r| codec::instance(&r, 0))
                .transpose()
        })
        .await
    }

    async fn list_steps(&self, id: InstanceId) -> Result<Vec<StepRun>, StoreError> {
        self.bounded("list_steps", async {
            sqlx::query(&self.q().list_steps)
                .bind(id.0)
                .fetch_all(self.pool())
                .await
                .map_err(map_sqlx)?
                .iter()
                .map(|r| codec::step_run(r, 0))
                .collect()
        })
        .await
    }

    async fn find_by_idempotency_key(
        &self,
        workflow_id: &WorkflowId,
        key: &str,
    ) -> Result<Option<InstanceId>, StoreError> {
        self.bounded("find_by_idempotency_key", async {
            let id: Option<uuid::Uuid> = sqlx::query_scalar(&self.q().find_idem)
                .bind(workflow_id.as_str())
                .bind(key)
                .fetch_optional(self.pool())
                .await
                .map_err(map_sqlx)?;
            Ok(id.map(InstanceId))
        })
        .await
    }

    async fn list_instances(
        &self,
        q: &InstanceQuery,
    ) -> Result<Page<InstanceRecord, InstanceId>, StoreError> {
        self.bounded("list_instances", async {
            let limit = page_limit(q.limit);
            let rows = sqlx::query(&self.q().list_instances)
                .bind(q.workflow_id.as_ref().map(WorkflowId::as_str))
                .bind(q.status.map(InstanceStatus::as_str))
                .bind(q.after.map(|a| a.0))
                .bind(limit_i64(limit + 1))
                .fetch_all(self.pool())
                .await
                .map_err(map_sqlx)?;
            let items = rows
                .iter()
                .map(|r| codec::instance(r, 0))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(page_of(items, limit, |r| r.id))
        })
        .await
    }

    async fn list_events(
        &self,
        id: InstanceId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.bounded("list_events", async {
            let after = after_seq.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
            sqlx::query(&self.q().list_events)
                .bind(id.0)
                .bind(after)
                .bind(limit_i64(page_limit(limit)))
                .fetch_all(self.pool())
                .await
                .map_err(map_sqlx)?
                .iter()
                .map(|r| codec::event(r, 0))
                .collect()
        })
        .await
    }

    async fn list_dlq(&self, q: &DlqQuery) -> Result<Page<DlqRecord, DlqId>, StoreError> {
        self.bounded("list_dlq", async {
            let limit = page_limit(q.limit);
            let rows = sqlx::query(&self.q().list_dlq)
                .bind(q.instance_id.map(|i| i.0))
                .bind(q.workflow_id.as_ref().map(WorkflowId::as_str))
                .bind(q.after.map(|a| i64::try_from(a.0).unwrap_or(i64::MAX)))
                .bind(limit_i64(limit + 1))
                .fetch_all(self.pool())
                .await
                .map_err(map_sqlx)?;
            let items = rows
                .iter()
                .map(|r| codec::dlq_record(r, 0))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(page_of(items, limit, |r| r.id))
        })
        .await
    }

    async fn get_dlq(&self, id: DlqId) -> Result<Option<DlqRecord>, StoreError> {
        self.bounded("get_dlq", async {
            let Ok(id) = i64::try_from(id.0) else {
                return Ok(None);
            };
            sqlx::query(&self.q().get_dlq)
                .bind(id)
                .fetch_optional(self.pool())
                .await
                .map_err(map_sqlx)?
                .map(|r| codec::dlq_record(&r, 0))
                .transpose()
        })
        .await
    }

    async fn list_queue(&self, id: InstanceId) -> Result<Vec<QueueItem>, StoreError> {
        self.bounded("list_queue", async {
            sqlx::query(&self.q().list_queue)
                .bind(id.0)
                .fetch_all(self.pool())
                .await
                .map_err(map_sqlx)?
                .iter()
                .map(|r| codec::queue_item(r, 0))
                .collect()
        })
        .await
    }

    async fn next_due(&self, handlers: &[Arc<str>]) -> Result<Option<Timestamp>, StoreError> {
        self.bounded("next_due", async {
            if handlers.is_empty() {
                return Ok(None);
            }
            let handlers: Vec<&str> = handlers.iter().map(|h| &**h).collect();
            let due: Option<i64> = sqlx::query_scalar(&self.q().next_due)
                .bind(&handlers)
                .fetch_one(self.pool())
                .await
                .map_err(map_sqlx)?;
            Ok(due.map(Timestamp))
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.bounded("stats", async {
            let rows = sqlx::query(&self.q().stats)
                .fetch_all(self.pool())
                .await
                .map_err(map_sqlx)?;
            let mut by_status: HashMap<String, u64> = HashMap::new();
            let mut stats = StoreStats::default();
            for row in &rows {
                let what: String = row.try_get(0).map_err(map_sqlx)?;
                let name: String = row.try_get(1).map_err(map_sqlx)?;
                let n: i64 = row.try_get(2).map_err(map_sqlx)?;
                let n = u64::try_from(n).unwrap_or(0);
                match (what.as_str(), name.as_str()) {
                    ("i", _) => {
                        by_status.insert(name, n);
                    }
                    ("q", "ready") => stats.queue_ready = n,
                    ("q", _) => stats.queue_leased = n,
                    _ => stats.dlq = n,
                }
            }
            stats.instances_by_status = InstanceStatus::ALL
                .iter()
                .filter_map(|s| {
                    by_status
                        .get(s.as_str())
                        .filter(|n| **n > 0)
                        .map(|n| (s.as_str().to_owned(), *n))
                })
                .collect();
            Ok(stats)
        })
        .await
    }

    async fn wait_for_work(&self, timeout_ms: u64) -> WorkWait {
        if !self.inner.config.notify {
            return WorkWait::Unsupported;
        }
        // Starts the listener task (its own connection) on first use.
        let timeout = Duration::from_millis(timeout_ms);
        if self.inner.signal.wait(&self.inner.pool, timeout).await {
            WorkWait::Notified
        } else {
            WorkWait::TimedOut
        }
    }

    /// The database server's `clock_timestamp()` (the time at the moment the statement
    /// reads it, not the start of a transaction), in milliseconds: one round trip. See
    /// [the crate docs](crate#time-and-clock-skew).
    async fn clock(&self) -> Result<Option<Timestamp>, StoreError> {
        self.bounded("clock", async {
            let ms: i64 = sqlx::query_scalar(CLOCK_QUERY)
                .fetch_one(self.pool())
                .await
                .map_err(map_sqlx)?;
            Ok(Some(Timestamp(ms)))
        })
        .await
    }

    async fn cleanup(&self, older_than: Timestamp) -> Result<u64, StoreError> {
        retention::cleanup(self, older_than).await
    }
}

/// The database's current time in epoch milliseconds ([`Store::clock`]).
const CLOCK_QUERY: &str = "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";
