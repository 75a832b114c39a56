//! Every SQL statement of the store, with the schema name filled in once at construction.
//!
//! Statements are plain strings checked at run time (no `DATABASE_URL` at compile time);
//! sqlx prepares each once per connection and caches it, so the hot statements (claim,
//! heartbeat, the group-commit batch) run as prepared statements.

use crate::codec::{DLQ_COLS, EVENT_COLS, INSTANCE_COLS, QUEUE_COLS, STEP_COLS};
use crate::commit::sql as c;

/// Opens the transactions of the store's hot paths that span several statements (heartbeat,
/// group commit); the claim is one autocommit statement with the same settings as the
/// `SET` clauses of its function ([`CLAIM_FUNCTION`]).
///
/// Their statements look rows up by key, in batches (`UNNEST($1)` joined with a table, or
/// `= ANY`). The planner knows nothing of an `UNNEST` parameter and sizes tables from
/// statistics that lag behind a fast-growing table, and prepared statements keep a generic
/// plan made once: seen here, a plan made while `workflow_instances` was small kept seq
/// scanning it (and comparing every row with every array element) long after it had grown
/// large, and a custom plan merge-joined a whole index to find 256 rows. Key lookups never
/// want a seq scan, a hash or a merge join, so these transactions turn them off (`SET
/// LOCAL`: the settings end with the transaction, the pool's connections are untouched).
///
/// They also set `idle_in_transaction_session_timeout` to the call deadline
/// ([`Queries::new`]): the server ends a session that sits idle inside one of these
/// transactions for longer than the client waits for the whole call. Why: a client cut off
/// mid-transaction (a network partition, a proxy that stops forwarding without closing)
/// has given up on the call after its deadline, but the server keeps the transaction open
/// — and its row locks held — for as long as the TCP connection looks alive (hours); every
/// other worker's commit of those instances then waits on the locks and claims skip the
/// locked queue rows, so the instances are stuck (found by the chaos partition test).
const BEGIN_KEYED: &str = "BEGIN; SET LOCAL enable_seqscan = off; \
    SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// Resolved SQL text.
pub(crate) struct Queries {
    /// [`BEGIN_KEYED`] with the idle-in-transaction deadline.
    pub(crate) begin_keyed: String,
    pub(crate) lock_instances: String,
    pub(crate) batch_steps: String,
    pub(crate) batch_dlq: String,
    pub(crate) find_idem_batch: String,
    pub(crate) lock_queue: String,
    pub(crate) dlq_exists: String,
    pub(crate) insert_instances: String,
    pub(crate) update_instances: String,
    pub(crate) insert_steps: String,
    pub(crate) update_steps: String,
    pub(crate) upsert_queue: String,
    pub(crate) next_tokens: String,
    pub(crate) delete_queue: String,
    pub(crate) cancel_queue: String,
    pub(crate) insert_events: String,
    pub(crate) delete_dlq: String,
    pub(crate) insert_dlq: String,
    pub(crate) insert_decisions: String,
    pub(crate) notify: String,

    /// `CREATE OR REPLACE FUNCTION {s}.floxy_claim`: see [`CLAIM_FUNCTION`].
    pub(crate) create_claim: String,
    /// The call of [`CLAIM_FUNCTION`].
    pub(crate) claim: String,
    pub(crate) heartbeat: String,
    pub(crate) next_due: String,

    pub(crate) put_definition: String,
    pub(crate) get_definition: String,
    pub(crate) list_definitions: String,
    pub(crate) get_instance: String,
    pub(crate) list_steps: String,
    pub(crate) list_dlq_of: String,
    pub(crate) find_idem: String,
    pub(crate) list_instances: String,
    pub(crate) list_events: String,
    pub(crate) list_dlq: String,
    pub(crate) get_dlq: String,
    pub(crate) list_queue: String,
    pub(crate) stats: String,
    pub(crate) cleanup_collect: String,
    pub(crate) cleanup: String,
    pub(crate) layout: String,
}

/// The claim, as a function of the schema (`{s}.floxy_claim(handlers, now, limit, owner)`),
/// created by [`crate::PostgresStore::migrate`] (`CREATE OR REPLACE`, so every migrate
/// brings it up to date) and called as one autocommit statement: one round trip, one
/// implicit transaction.
///
/// Its planner settings are the function's own `SET` clauses (in force while it runs, the
/// session's settings untouched): `enable_seqscan = off` and `enable_mergejoin = off`, as in
/// [`BEGIN_KEYED`] and for the same reasons, but hash joins stay on: the claim joins the
/// rows it picked with their own TID scan (`ctid = ANY(…)`), where a nested loop would
/// compare every picked row with every other (quadratic in the batch size; see
/// `docs/perf-notes.md`). PL/pgSQL keeps the statement's plan per connection as a prepared
/// statement would (custom plans first, then the generic plan if it is no worse).
///
/// No idle-in-transaction deadline is needed: the implicit transaction of an autocommit
/// statement ends with the statement (sqlx sends its `Sync` with it), so it can never sit
/// idle waiting for a client that was cut off; the claim's leases then expire like those of
/// a worker that died.
///
/// `CREATE OR REPLACE` cannot change a function's result columns: a version of the store
/// that changes them must `DROP FUNCTION` the old one first.
///
/// What it returns is the statement's snapshot of the step run, from before the claim's own
/// update (every part of one statement sees the same snapshot, so the final `SELECT` does not
/// see what the `st` part wrote); the store applies the same change to it in Rust
/// (`floxy_core::checks::start_run`, under the same condition as the `st` part), so the
/// worker gets the run as stored without reading it again.
const CLAIM_FUNCTION: &str = "\
CREATE OR REPLACE FUNCTION {s}.floxy_claim(
    handlers text[], now_ms bigint, max_items bigint, owner text)
RETURNS TABLE (
    q_instance_id uuid, q_step text, q_kind text, q_workflow_id text, q_handler text,
    q_run_at bigint, q_priority smallint, q_order_key bigint, q_attempt integer,
    q_lease_ttl_ms bigint, q_cancel_requested boolean, q_lease_owner text,
    q_lease_token bigint, q_lease_expires_at bigint, q_was_leased boolean,
    r_instance_id uuid, r_step text, r_status text, r_attempts integer,
    r_compensation_attempts integer, r_input jsonb, r_output jsonb, r_error text,
    r_completed_seq bigint, r_compensate text, r_cancel_requested boolean, r_decision jsonb,
    r_created_at bigint, r_started_at bigint, r_finished_at bigint, r_ok boolean)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_mergejoin = off
AS $claim$
#variable_conflict use_column
BEGIN
RETURN QUERY
WITH h AS (SELECT DISTINCT unnest($1::text[]) AS handler),
cand AS (
    SELECT x.* FROM h CROSS JOIN LATERAL (
        SELECT q.ctid AS tid, q.instance_id, q.step, q.kind_ord, q.order_key,
               false AS was_leased
          FROM {s}.workflow_queue q
         WHERE q.handler = h.handler AND q.lease_token IS NULL AND q.run_at <= $2
         ORDER BY q.order_key, q.instance_id, q.step, q.kind_ord
         LIMIT $3
           FOR UPDATE SKIP LOCKED) x
    UNION ALL
    SELECT x.* FROM h CROSS JOIN LATERAL (
        SELECT q.ctid AS tid, q.instance_id, q.step, q.kind_ord, q.order_key,
               true AS was_leased
          FROM {s}.workflow_queue q
         WHERE q.handler = h.handler AND q.lease_token IS NOT NULL
           AND q.lease_expires_at <= $2 AND q.run_at <= $2
         ORDER BY q.order_key, q.instance_id, q.step, q.kind_ord
         LIMIT $3
           FOR UPDATE SKIP LOCKED) x
),
pick AS (
    SELECT c.tid, c.was_leased, nextval('{s}.workflow_lease_tokens') AS token
      FROM (SELECT * FROM cand ORDER BY order_key, instance_id, step, kind_ord LIMIT $3) c
),
upd AS (
    UPDATE {s}.workflow_queue q
       SET attempt = q.attempt + 1, lease_owner = $4, lease_token = p.token,
           lease_expires_at = $2 + q.lease_ttl_ms
      FROM pick p
     WHERE q.ctid = ANY (ARRAY(SELECT tid FROM pick)) AND q.ctid = p.tid
    RETURNING q.instance_id, q.step, q.kind, q.workflow_id, q.handler, q.run_at, q.priority,
              q.order_key, q.attempt, q.lease_ttl_ms, q.cancel_requested, q.lease_owner,
              q.lease_token, q.lease_expires_at, p.was_leased
),
st AS (
    UPDATE {s}.workflow_steps r
       SET status = 'running', attempts = u.attempt, started_at = $2
      FROM upd u
     WHERE u.kind = 'execute' AND r.instance_id = u.instance_id AND r.step = u.step
       AND r.status IN ('pending', 'retrying', 'running')
    RETURNING r.instance_id, r.step, r.attempts, u.lease_token
),
ev AS (
    INSERT INTO {s}.workflow_events (instance_id, created_at, kind, step, attempt)
    SELECT st.instance_id, $2, 'step_started', st.step, st.attempts
      FROM st
     ORDER BY st.lease_token
)
SELECT u.instance_id, u.step, u.kind, u.workflow_id, u.handler, u.run_at, u.priority,
       u.order_key, u.attempt, u.lease_ttl_ms, u.cancel_requested, u.lease_owner,
       u.lease_token, u.lease_expires_at, u.was_leased,
       r0.instance_id, r0.step, r0.status, r0.attempts, r0.compensation_attempts, r0.input,
       r0.output, r0.error, r0.completed_seq, r0.compensate, r0.cancel_requested, r0.decision,
       r0.created_at, r0.started_at, r0.finished_at,
       CASE WHEN r0.step IS NULL
            THEN {s}.floxy_corrupt('queue item ' || u.instance_id || '/' || u.step
                                   || ' (' || u.kind || ') has no step run')
            ELSE true END
  FROM upd u
  LEFT JOIN LATERAL (
      SELECT * FROM {s}.workflow_steps r1
       WHERE r1.instance_id = u.instance_id AND r1.step = u.step) r0 ON true
 ORDER BY u.lease_token;
END
$claim$";

/// One claim: a single autocommit statement (see [`CLAIM_FUNCTION`]).
const CLAIM: &str = "SELECT * FROM {s}.floxy_claim($1::text[], $2::int8, $3::int8, $4::text)";

const HEARTBEAT: &str = "\
WITH r AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[])
        AS r(instance_id, step, kind, token)
),
l AS (
    SELECT q.ctid AS tid
      FROM {s}.workflow_queue q
      JOIN r ON q.instance_id = r.instance_id AND q.step = r.step AND q.kind = r.kind
            AND q.lease_token = r.token
     WHERE q.lease_owner = $5
     ORDER BY q.instance_id, q.step, q.kind_ord
       FOR NO KEY UPDATE OF q
)
UPDATE {s}.workflow_queue q
   SET lease_expires_at = $6 + q.lease_ttl_ms
 WHERE q.ctid = ANY (ARRAY(SELECT tid FROM l))
RETURNING q.instance_id, q.step, q.kind, q.lease_token, q.lease_expires_at, q.cancel_requested";

/// An unleased item is due at `run_at`; a leased one at `greatest(run_at, expiry)`, which is
/// its expiry (a claim needs `run_at <= now < now + ttl`), found through the leased index.
const NEXT_DUE: &str = "\
WITH h AS (SELECT DISTINCT unnest($1::text[]) AS handler)
SELECT least(
    (SELECT min(x.run_at) FROM h CROSS JOIN LATERAL (
        SELECT q.run_at FROM {s}.workflow_queue q
         WHERE q.handler = h.handler AND q.lease_token IS NULL
         ORDER BY q.run_at LIMIT 1) x),
    (SELECT min(greatest(x.run_at, x.lease_expires_at)) FROM h CROSS JOIN LATERAL (
        SELECT q.run_at, q.lease_expires_at FROM {s}.workflow_queue q
         WHERE q.handler = h.handler AND q.lease_token IS NOT NULL
         ORDER BY q.lease_expires_at LIMIT 1) x))";

const STATS: &str = "\
SELECT 'i' AS what, status AS name, count(*) AS n FROM {s}.workflow_instances GROUP BY status
UNION ALL
SELECT 'q', CASE WHEN lease_token IS NULL THEN 'ready' ELSE 'leased' END, count(*)
  FROM {s}.workflow_queue GROUP BY 2
UNION ALL
SELECT 'd', 'dlq', count(*) FROM {s}.workflow_dlq";

/// Retention, phase 1: one slice of at most `$2` instances created before the cutoff `$1`,
/// after the cursor `($3, $4)` in `(created_at, id)` order (a range of the index
/// `workflow_instances_created_idx`, whose column never changes, so completions stay HOT
/// updates); answers the old terminal instances of the slice, the slice's size and its last
/// key (the next cursor). An instance last updated before the cutoff was created before it.
const CLEANUP_COLLECT: &str = "\
WITH slice AS (
    SELECT id, created_at, status, updated_at FROM {s}.workflow_instances
     WHERE created_at < $1 AND (created_at, id) > ($3::int8, $4::uuid)
     ORDER BY created_at, id
     LIMIT $2
)
SELECT coalesce((SELECT array_agg(id) FROM slice
                  WHERE status IN ('completed', 'failed', 'cancelled', 'aborted')
                    AND updated_at < $1), '{}'::uuid[]),
       (SELECT count(*) FROM slice),
       l.created_at, l.id
  FROM (SELECT 1) one
  LEFT JOIN (SELECT created_at, id FROM slice ORDER BY created_at DESC, id DESC LIMIT 1) l
    ON true";

/// Retention, phase 2: one chunk of those (locked, skipping busy ones, re-checked) and all
/// their rows.
const CLEANUP: &str = "\
WITH v AS (
    SELECT id FROM {s}.workflow_instances
     WHERE id = ANY ($2::uuid[])
       AND status IN ('completed', 'failed', 'cancelled', 'aborted') AND updated_at < $1
       FOR UPDATE SKIP LOCKED
),
dq AS (DELETE FROM {s}.workflow_queue x WHERE x.instance_id = ANY (ARRAY(SELECT id FROM v))),
ds AS (DELETE FROM {s}.workflow_steps x WHERE x.instance_id = ANY (ARRAY(SELECT id FROM v))),
de AS (DELETE FROM {s}.workflow_events x WHERE x.instance_id = ANY (ARRAY(SELECT id FROM v))),
dd AS (DELETE FROM {s}.workflow_dlq x WHERE x.instance_id = ANY (ARRAY(SELECT id FROM v))),
dh AS (DELETE FROM {s}.workflow_human_decisions x
        WHERE x.instance_id = ANY (ARRAY(SELECT id FROM v))),
di AS (DELETE FROM {s}.workflow_instances x WHERE x.id = ANY (ARRAY(SELECT id FROM v)) RETURNING 1)
SELECT count(*) FROM di";

impl Queries {
    /// Resolves every statement for `schema` (an already quoted identifier); the
    /// transactions of the hot paths end server-side after `call_timeout_ms` idle (see
    /// [`BEGIN_KEYED`]).
    pub(crate) fn new(schema: &str, call_timeout_ms: u64) -> Self {
        let r = |t: &str| t.replace("{s}", schema);
        let idle = format!("; SET LOCAL idle_in_transaction_session_timeout = {call_timeout_ms}");
        Self {
            begin_keyed: format!("{BEGIN_KEYED}{idle}"),
            lock_instances: r(&c::lock_instances()),
            batch_steps: r(&c::batch_steps()),
            batch_dlq: r(&c::batch_dlq()),
            find_idem_batch: r(c::FIND_IDEM_BATCH),
            lock_queue: r(c::LOCK_QUEUE),
            dlq_exists: r(c::DLQ_EXISTS),
            insert_instances: r(&c::insert_instances()),
            update_instances: r(&c::update_instances()),
            insert_steps: r(&c::insert_steps()),
            update_steps: r(&c::update_steps()),
            upsert_queue: r(c::UPSERT_QUEUE),
            next_tokens: r(c::NEXT_TOKENS),
            delete_queue: r(c::DELETE_QUEUE),
            cancel_queue: r(c::CANCEL_QUEUE),
            insert_events: r(c::INSERT_EVENTS),
            delete_dlq: r(c::DELETE_DLQ),
            insert_dlq: r(c::INSERT_DLQ),
            insert_decisions: r(c::INSERT_DECISIONS),
            notify: r(c::NOTIFY),

            create_claim: r(CLAIM_FUNCTION),
            claim: r(CLAIM),
            heartbeat: r(HEARTBEAT),
            next_due: r(NEXT_DUE),

            put_definition: r("INSERT INTO {s}.workflow_definitions (id, name, version, \
                 definition) VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (id) DO NOTHING"),
            get_definition: r("SELECT definition FROM {s}.workflow_definitions WHERE id = $1"),
            list_definitions: r("SELECT definition FROM {s}.workflow_definitions ORDER BY id"),
            get_instance: r(&format!(
                "SELECT {INSTANCE_COLS} FROM {{s}}.workflow_instances WHERE id = $1"
            )),
            list_steps: r(&format!(
                "SELECT {STEP_COLS} FROM {{s}}.workflow_steps WHERE instance_id = $1 \
                 ORDER BY created_at, step"
            )),
            list_dlq_of: r(&format!(
                "SELECT {DLQ_COLS} FROM {{s}}.workflow_dlq WHERE instance_id = $1 ORDER BY id"
            )),
            find_idem: r("SELECT id FROM {s}.workflow_instances \
                 WHERE workflow_id = $1 AND idempotency_key = $2"),
            list_instances: r(&format!(
                "SELECT {INSTANCE_COLS} FROM {{s}}.workflow_instances \
                 WHERE ($1::text IS NULL OR workflow_id = $1) \
                   AND ($2::text IS NULL OR status = $2) \
                   AND ($3::uuid IS NULL OR id > $3) \
                 ORDER BY id LIMIT $4"
            )),
            list_events: r(&format!(
                "SELECT {EVENT_COLS} FROM {{s}}.workflow_events \
                 WHERE instance_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            )),
            list_dlq: r(&format!(
                "SELECT {DLQ_COLS} FROM {{s}}.workflow_dlq \
                 WHERE ($1::uuid IS NULL OR instance_id = $1) \
                   AND ($2::text IS NULL OR workflow_id = $2) \
                   AND ($3::int8 IS NULL OR id > $3) \
                 ORDER BY id LIMIT $4"
            )),
            get_dlq: r(&format!(
                "SELECT {DLQ_COLS} FROM {{s}}.workflow_dlq WHERE id = $1"
            )),
            list_queue: r(&format!(
                "SELECT {QUEUE_COLS} FROM {{s}}.workflow_queue WHERE instance_id = $1 \
                 ORDER BY instance_id, step, kind_ord"
            )),
            stats: r(STATS),
            cleanup_collect: r(CLEANUP_COLLECT),
            cleanup: r(CLEANUP),
            layout: r("SELECT value FROM {s}.floxy_meta WHERE key = 'layout'"),
        }
    }
}
