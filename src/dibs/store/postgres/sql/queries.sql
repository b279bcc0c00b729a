-- Named queries of the PostgreSQL store (dibs.store.postgres). Each starts with a line
-- `-- name: NAME`; parameters are psycopg's %(name)s placeholders, never string formatting.

-- name: schema_exists
-- Whether dibs was ever set up in this database.
SELECT to_regclass('dibs.schema_version') IS NOT NULL;

-- name: schema_version
SELECT max(version) FROM dibs.schema_version;

-- name: migrate_lock
-- Serialises concurrent `dibs init` runs (transaction-level: released at COMMIT).
SELECT pg_advisory_xact_lock(7465, 1);

-- name: record_migration
INSERT INTO dibs.schema_version (version, dibs) VALUES (%(version)s, %(dibs)s);

-- name: create_namespace
INSERT INTO dibs.namespaces (name, boot, mono_offset)
VALUES (%(ns)s, %(boot)s, %(mono_offset)s)
ON CONFLICT (name) DO NOTHING;

-- name: open
-- Everything a new client needs in one round trip: the schema version, the namespace's
-- clock and counters, and its latest checkpoint (if any).
SELECT (SELECT max(version) FROM dibs.schema_version),
       n.boot, n.mono_offset, n.seq, c.seq, c.state,
       (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
FROM dibs.namespaces n
LEFT JOIN LATERAL (
    SELECT seq, state FROM dibs.checkpoints
    WHERE namespace = n.name ORDER BY seq DESC LIMIT 1
) c ON true
WHERE n.name = %(ns)s;

-- name: begin
BEGIN;

-- name: commit
COMMIT;

-- name: rollback
ROLLBACK;

-- name: lock_namespace
-- Taken first in every write: serialises writers of one namespace until COMMIT. The next
-- statement in the transaction then sees every event committed before the lock was granted
-- (READ COMMITTED takes a new snapshot per statement).
SELECT seq, last_token, boot, mono_offset FROM dibs.namespaces WHERE name = %(ns)s FOR UPDATE;

-- name: lock_and_read
-- Round trip 1 of a locked write (see dibs.lock_and_read in migrate_002.sql).
SELECT * FROM dibs.lock_and_read(%(ns)s, %(since)s, %(keys_agent)s::text[], %(keys_resource)s::text[]);

-- name: live_rows
-- The dibs.live rows of some leases and agents (locked until COMMIT with lock).
SELECT * FROM dibs.live_rows(%(ns)s, %(keys_agent)s::text[], %(keys_resource)s::text[], %(lock)s);

-- name: catch_up_live
-- A read: the clock, every event after %(since)s, and the dibs.live rows of the leases and
-- agents the reader finds expired (they may have been renewed outside the log).
SELECT c.micros, c.count, c.bodies, r.agents, r.resources, r.tokens, r.secrets, r.expires
FROM (
    SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS micros,
           count(*) AS count, coalesce(string_agg(body, E'\n' ORDER BY seq), '') AS bodies
    FROM dibs.events WHERE namespace = %(ns)s AND seq > %(since)s
) c, dibs.live_rows(%(ns)s, %(keys_agent)s::text[], %(keys_resource)s::text[], false) r;

-- name: renew
-- A renewal or heartbeat outside the namespace lock (see dibs.renew in migrate_002.sql).
SELECT dibs.renew(%(ns)s, %(agent)s, %(secret)s, %(everything)s, %(resources)s::text[],
                  %(tokens)s::bigint[], %(at_mono)s::bigint, %(offset)s::bigint);

-- name: catch_up
-- The deciding clock (server time in microseconds) and every event after %(since)s, joined
-- by newlines: one row, whatever the number of events.
SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
       count(*),
       coalesce(string_agg(body, E'\n' ORDER BY seq), '')
FROM dibs.events
WHERE namespace = %(ns)s AND seq > %(since)s;

-- name: append_if_current
-- Append a decision's events if the namespace is still where the decision was made (see
-- dibs.append in migrate_002.sql); the arrays travel in binary: no quoting of JSON text.
SELECT * FROM dibs.append(
    %(ns)s, %(expected)s, %(first)s, %(last)s, %(token)s, %(request)s,
    %(decided_us)s::bigint, %(notify)s,
    %(seqs)b::bigint[], %(ops)b::text[], %(agents)b::text[], %(resources)b::text[],
    %(tokens)b::bigint[], %(bodies)b::text[], %(monos)b::bigint[], %(ttls)b::bigint[],
    %(secrets)b::text[], %(scopes)b::text[]);

-- name: append_commuting
-- Append a claim or release that commutes with whatever was written since the client's
-- state (dibs.append_commuting, migrate_003.sql and migrate_004.sql), durable before the
-- answer comes back (the procedure, migrate_005.sql), its notification naming the scopes it
-- freed (wake, migrate_006.sql). Outside a transaction block only.
CALL dibs.append_commuting_durable(
    %(ns)s, %(expected)s, %(base_token)s, %(request)s, %(decided_us)s::bigint, %(notify)s,
    %(mover)s, %(mono)s, %(ops)b::text[], %(resources)b::text[], %(tokens)b::bigint[],
    %(ttls)b::bigint[], %(templates)b::text[], %(scopes)b::text[], %(reads)b::text[],
    %(above)b::text[], %(below)b::text[], %(root)s, %(harmless)b::text[],
    %(async_after_us)s::bigint, %(wake)s::text);

-- name: durable
-- Make what this session committed asynchronously durable (dibs.append_commuting, schema
-- version 4), after a lost answer (Session._settle: dibs.append_commuting_durable does it
-- otherwise). A transaction that writes a WAL record (a transactional logical-decoding
-- message: one small record, no table touched; anyone may call it, at any wal_level) commits
-- with synchronous_commit on, so its commit waits until the WAL is on disk up to its commit
-- record, which comes after every commit record written before it. A transaction that only
-- takes an id (txid_current()) is not enough: PostgreSQL flushes at commit only if the
-- transaction wrote WAL before its commit record.
SELECT pg_logical_emit_message(true, 'dibs', '');

-- name: ping
-- Read what the server sent (a notification is handed to the client's handler).
SELECT 1;

-- name: listen
LISTEN dibs;

-- name: unlisten
UNLISTEN dibs;

-- name: end_backend
-- End the server process of a connection the client gave up (pid), if it is still there; a
-- row while it is (see Session._end_orphan). Only one of this user and database that started
-- before this session.
SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
WHERE a.pid = %(pid)s AND a.datname = current_database() AND a.usename = current_user
  AND a.backend_start < (SELECT b.backend_start FROM pg_stat_activity b
                         WHERE b.pid = pg_backend_pid());

-- name: find_request
-- Whether the transaction with this idempotency key was committed, where, and its %(count)s
-- events as recorded (a commuting append may have moved them up).
SELECT r.seq, (SELECT string_agg(e.body, E'\n' ORDER BY e.seq) FROM dibs.events e
               WHERE e.namespace = %(ns)s AND e.seq >= r.seq AND e.seq < r.seq + %(count)s)
FROM dibs.events r WHERE r.namespace = %(ns)s AND r.request = %(request)s;

-- name: events_page
SELECT seq, body FROM dibs.events
WHERE namespace = %(ns)s AND seq > %(since)s
ORDER BY seq LIMIT %(limit)s;

-- name: tail
SELECT body FROM (
    SELECT seq, body FROM dibs.events WHERE namespace = %(ns)s ORDER BY seq DESC LIMIT %(count)s
) t ORDER BY seq;

-- name: counters
SELECT n.seq, n.last_token, (SELECT count(*) FROM dibs.events e WHERE e.namespace = n.name),
       (SELECT max(seq) FROM dibs.events e WHERE e.namespace = n.name)
FROM dibs.namespaces n WHERE n.name = %(ns)s;

-- name: raise_last_token
-- `dibs doctor --repair`: the fencing counter only ever goes up, whoever writes meanwhile.
UPDATE dibs.namespaces SET last_token = greatest(last_token, %(token)s) WHERE name = %(ns)s;

-- name: begin_snapshot
-- `dibs doctor`: every later statement of the transaction sees one committed moment.
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;

-- name: checkpoints
SELECT seq, state FROM dibs.checkpoints WHERE namespace = %(ns)s ORDER BY seq;

-- name: save_checkpoint
INSERT INTO dibs.checkpoints (namespace, seq, state) VALUES (%(ns)s, %(seq)s, %(state)s)
ON CONFLICT (namespace, seq) DO NOTHING;

-- name: prune_checkpoints
-- Keep the two newest checkpoints of the namespace.
DELETE FROM dibs.checkpoints
WHERE namespace = %(ns)s AND seq < ALL (
    SELECT seq FROM dibs.checkpoints WHERE namespace = %(ns)s ORDER BY seq DESC LIMIT 2
);

-- name: live_all
-- `dibs doctor`: every row of dibs.live of the namespace (in the doctor's snapshot).
SELECT agent, resource, token, secret, expires FROM dibs.live WHERE namespace = %(ns)s;

-- name: drop_live_row
-- `dibs doctor --repair`: a row of no current lease or registration, if it is still that row.
DELETE FROM dibs.live
WHERE namespace = %(ns)s AND agent = %(agent)s AND resource = %(resource)s
  AND token IS NOT DISTINCT FROM %(token)s::bigint
  AND secret IS NOT DISTINCT FROM %(secret)s::text;

-- name: raise_live_row
-- `dibs doctor --repair`: a row never expires before the log says (only ever raised).
UPDATE dibs.live SET expires = greatest(expires, %(expires)s)
WHERE namespace = %(ns)s AND agent = %(agent)s AND resource = %(resource)s;

-- name: drop_checkpoint
DELETE FROM dibs.checkpoints WHERE namespace = %(ns)s AND seq = %(seq)s;

-- name: import_events
-- `dibs store migrate`: copy events as they are (seq included) into an empty namespace.
INSERT INTO dibs.events (namespace, seq, op, agent, resource, token, body, scope)
SELECT %(ns)s, e.seq, e.op, e.agent, e.resource, e.token, e.body, e.scope
FROM unnest(%(seqs)s::bigint[], %(ops)s::text[], %(agents)s::text[],
            %(resources)s::text[], %(tokens)s::bigint[], %(bodies)s::text[],
            %(scopes)s::text[])
    AS e(seq, op, agent, resource, token, body, scope);

-- name: import_counters
UPDATE dibs.namespaces
SET seq = %(seq)s, last_token = %(token)s, boot = %(boot)s, mono_offset = %(mono_offset)s
WHERE name = %(ns)s AND seq = 0;

-- name: server_clock
SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint;
