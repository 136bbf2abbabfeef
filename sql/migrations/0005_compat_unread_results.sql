-- eqflow schema, version 5: EQ-SQL compatibility (eqflow.compat.eqsql). EQ-SQL keeps a
-- reported result in its input queue until the ME reads it, and are_queues_empty() answers
-- from that queue. Here: the tasks submitted through compat whose result has not been read.
-- A row is written in the same statement as its task and deleted when the result is read.
-- No foreign key: tools that TRUNCATE the task table by name keep working.
CREATE TABLE compat_unread_results (
    task_id bigint PRIMARY KEY
);
