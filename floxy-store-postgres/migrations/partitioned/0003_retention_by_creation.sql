-- Completions update the instance row in place (HOT): no indexed column may change on the
-- hot path. The terminal partial index (`WHERE status IN (<terminal>)`) made every
-- instance's last update write a new version with an entry in each of the table's four
-- indexes, because its predicate reads `status`. Retention finds its candidates through an
-- index on the creation time instead, which never changes after the insert: an instance
-- last updated before the cutoff was created before it (`created_at <= updated_at`), so a
-- walk of `created_at < cutoff` in (created_at, id) order, in bounded slices, sees every
-- candidate and checks status and `updated_at` in the heap.
-- (On a large existing table the index build blocks writes to the instances while it runs.)
DROP INDEX IF EXISTS workflow_instances_terminal_idx;
CREATE INDEX workflow_instances_created_idx ON workflow_instances (created_at, id);
-- Room for HOT updates: a completion updates many instances of one page in one group
-- commit (instances created together finish together); at 80 % fill a page had room for
-- the new versions of about a quarter of its rows, and the rest were written to other
-- pages with new index entries. New pages are filled to half (existing pages keep theirs).
ALTER TABLE workflow_instances SET (fillfactor = 50);
