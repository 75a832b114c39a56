-- Events are always read and deleted by instance (`list_events`, retention), never by `seq`
-- alone: key the table by (instance_id, seq) and drop the separate `seq` index. Every event
-- is written once per transition, so this saves one index insertion per event on the hot
-- path (three per no-op step: `step_started`, `step_completed` and the next event).
-- `seq` stays an identity column: unique and increasing in commit order per instance.
ALTER TABLE workflow_events DROP CONSTRAINT workflow_events_pkey;
DROP INDEX workflow_events_instance_idx;
ALTER TABLE workflow_events ADD CONSTRAINT workflow_events_pkey PRIMARY KEY (instance_id, seq);
