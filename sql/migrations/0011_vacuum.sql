-- eqflow schema, version 11: vacuum that keeps pace with a queue (issue #13).
--
-- Every task is written three times (submitted, claimed, reported), and none of these updates
-- can be HOT: each changes status, a column of the queue and lease indexes' predicates. So each
-- finished task leaves two dead row versions and two dead entries in each index, and PostgreSQL's
-- default trigger (a vacuum once dead rows pass 20 % of the table) lets a long run carry
-- hundreds of thousands of them: claims then step over dead index entries. Vacuum earlier and
-- faster on tasks (measured by `eqflow bench churn`, see the README):
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 1000
);

-- Not changed: fillfactor. It pays where updates can be HOT, and no update of tasks can be; the
-- counters of 0007 (task_metrics) are updated HOT already (100 % in the same benchmark).
