-- floxy schema, partitioned layout: `workflow_steps` and `workflow_events` (the high-volume
-- tables) are partitioned daily by `created_at` (epoch milliseconds) with pg_partman 4.7
-- (native partitioning, premade partitions ahead and partitions back from today, 30 and 30 by
-- default, set by `PostgresConfig::partition_days` through the custom settings
-- `floxy.premake_days` / `floxy.history_days` of the migration connection, plus a default
-- partition for anything outside). pg_partman must be installable in schema `partman`.
-- Partman's own retention stays off: `PostgresStore::cleanup` drops a partition only when no
-- kept instance has a row in it (see the crate docs).
--
-- Runs with `search_path` set to the store's schema (see `PostgresStore::migrate`), so every
-- name below lands in that schema. Times are milliseconds since the Unix epoch (`bigint`),
-- exactly as the core's `Timestamp`; `*_at` columns can be read with `to_timestamp(x / 1000.0)`.

CREATE TABLE floxy_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO floxy_meta (key, value) VALUES ('layout', 'partitioned');

-- Fencing tokens: strictly increasing across all claims of the store.
CREATE SEQUENCE workflow_lease_tokens AS bigint;

CREATE TABLE workflow_definitions (
    id         text COLLATE "C" PRIMARY KEY, -- "<name>-v<version>"
    name       text NOT NULL,
    version    integer NOT NULL,
    definition jsonb NOT NULL,
    created_at bigint NOT NULL DEFAULT ((extract(epoch FROM clock_timestamp()) * 1000)::bigint)
);

CREATE TABLE workflow_instances (
    id              uuid PRIMARY KEY,
    workflow_id     text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'running', 'rolling_back',
                        'completed', 'failed', 'cancelling', 'cancelled', 'aborted', 'dlq')),
    input           jsonb NOT NULL,
    output          jsonb,
    error           text,
    idempotency_key text,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL,
    version         bigint NOT NULL,
    completion_seq  bigint NOT NULL,
    rollback_depth  integer NOT NULL,
    rollback_to     text,
    failed_step     text,
    branches        jsonb NOT NULL,
    CONSTRAINT workflow_instances_idempotency UNIQUE (workflow_id, idempotency_key)
) WITH (fillfactor = 80);
CREATE INDEX workflow_instances_workflow_idx ON workflow_instances (workflow_id, id);
-- Retention: terminal instances. Deliberately no index on `updated_at` or `status` alone:
-- every transition writes `updated_at`, and with no indexed column changing (`status` only
-- changes at start and end) the instance row is updated in place (HOT), without index writes.
CREATE INDEX workflow_instances_terminal_idx ON workflow_instances (id)
    WHERE status IN ('completed', 'failed', 'cancelled', 'aborted');

CREATE TABLE workflow_steps (
    instance_id           uuid NOT NULL,
    step                  text COLLATE "C" NOT NULL,
    status                text NOT NULL CHECK (status IN ('pending', 'running', 'retrying',
                              'completed', 'failed', 'skipped', 'compensating', 'rolled_back',
                              'compensation_failed', 'waiting_decision', 'confirmed',
                              'rejected', 'paused')),
    attempts              integer NOT NULL,
    compensation_attempts integer NOT NULL,
    input                 jsonb NOT NULL,
    output                jsonb,
    error                 text,
    completed_seq         bigint,
    compensate            text,
    cancel_requested      boolean NOT NULL,
    decision              jsonb,
    created_at            bigint NOT NULL,
    started_at            bigint,
    finished_at           bigint,
    PRIMARY KEY (instance_id, step, created_at)
) PARTITION BY RANGE (created_at);

-- The work queue: one row per (step run, kind) that still needs a worker. Rows are deleted
-- when the work is done, so this table stays small and hot.
CREATE TABLE workflow_queue (
    instance_id      uuid NOT NULL,
    step             text COLLATE "C" NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('execute', 'compensate', 'timer')),
    -- The core orders kinds execute < compensate < timer (claim tie-break).
    kind_ord         smallint NOT NULL GENERATED ALWAYS AS
                         (CASE kind WHEN 'execute' THEN 0 WHEN 'compensate' THEN 1 ELSE 2 END) STORED,
    workflow_id      text NOT NULL,
    handler          text NOT NULL,
    run_at           bigint NOT NULL,
    priority         smallint NOT NULL,
    order_key        bigint NOT NULL,        -- run_at - priority * aging_ms_per_point
    attempt          integer NOT NULL,
    lease_ttl_ms     bigint NOT NULL,
    cancel_requested boolean NOT NULL,
    lease_owner      text,
    lease_token      bigint,                 -- NULL: not leased
    lease_expires_at bigint,
    PRIMARY KEY (instance_id, step, kind)
) WITH (fillfactor = 70);
-- Claim order of unleased items, per handler: `ORDER BY order_key, key` walks this index.
CREATE INDEX workflow_queue_ready_idx
    ON workflow_queue (handler, order_key, instance_id, step, kind_ord)
    WHERE lease_token IS NULL;
-- Expired leases, found by expiry.
CREATE INDEX workflow_queue_leased_idx
    ON workflow_queue (handler, lease_expires_at)
    WHERE lease_token IS NOT NULL;
-- next_due of unleased items (leased ones are due at their expiry: the leased index).
CREATE INDEX workflow_queue_run_at_idx
    ON workflow_queue (handler, run_at)
    WHERE lease_token IS NULL;

CREATE TABLE workflow_events (
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    instance_id uuid NOT NULL,
    created_at  bigint NOT NULL,             -- the transition's `now`
    kind        text NOT NULL,
    step        text,
    attempt     integer,
    detail      jsonb,
    PRIMARY KEY (seq, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX workflow_events_instance_idx ON workflow_events (instance_id, seq);

CREATE TABLE workflow_dlq (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id uuid NOT NULL,
    workflow_id text NOT NULL,
    step        text NOT NULL,
    kind        text NOT NULL,
    input       jsonb NOT NULL,
    error       text NOT NULL,
    reason      text NOT NULL,
    created_at  bigint NOT NULL
);
CREATE INDEX workflow_dlq_instance_idx ON workflow_dlq (instance_id);
CREATE INDEX workflow_dlq_workflow_idx ON workflow_dlq (workflow_id, id);

-- Append-only log of human decisions (the step run's `decision` column is what the engine
-- reads; this table is for operators and audits).
CREATE TABLE workflow_human_decisions (
    instance_id uuid NOT NULL,
    step        text NOT NULL,
    decided_by  text NOT NULL,
    decision    text NOT NULL CHECK (decision IN ('confirm', 'reject')),
    comment     text,
    decided_at  bigint NOT NULL,
    PRIMARY KEY (instance_id, step)
);

-- Raises the error a claim reports as `StoreError::Corrupt` (SQLSTATE FX001).
CREATE FUNCTION floxy_corrupt(msg text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'FX001', MESSAGE = msg;
END
$$;

-- pg_partman: daily partitions of the two high-volume tables.
CREATE SCHEMA IF NOT EXISTS partman;
CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman;
DO $$
DECLARE
    t text;
    premake int := coalesce(nullif(current_setting('floxy.premake_days', true), ''), '30')::int;
    history int := coalesce(nullif(current_setting('floxy.history_days', true), ''), '30')::int;
BEGIN
    FOREACH t IN ARRAY ARRAY['workflow_steps', 'workflow_events'] LOOP
        PERFORM partman.create_parent(
            p_parent_table => current_schema() || '.' || t,
            p_control => 'created_at',
            p_type => 'native',
            p_interval => 'daily',
            p_epoch => 'milliseconds',
            p_premake => premake,
            p_start_partition => to_char(now() - make_interval(days => history), 'YYYY-MM-DD'));
        UPDATE partman.part_config
           SET infinite_time_partitions = true, retention = NULL
         WHERE parent_table = current_schema() || '.' || t;
    END LOOP;
END
$$;
