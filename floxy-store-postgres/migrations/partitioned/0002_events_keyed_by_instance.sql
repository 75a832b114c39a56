-- Events are always read and deleted by instance (`list_events`, retention), never by `seq`
-- alone: key the table by (instance_id, seq) and drop the separate `seq` index. Every event
-- is written once per transition, so this saves one index insertion per event on the hot
-- path. The partition key `created_at` must be part of the key of a partitioned table.
-- Changing the parent's key changes every partition's (PostgreSQL 11+), including the
-- default partition and those pg_partman makes later.
ALTER TABLE workflow_events DROP CONSTRAINT workflow_events_pkey;
DROP INDEX workflow_events_instance_idx;
ALTER TABLE workflow_events ADD CONSTRAINT workflow_events_pkey
    PRIMARY KEY (instance_id, seq, created_at);
