-- dibs schema version 4: a commuting append holds the namespace lock for its own work only,
-- not for the disk. See docs/explanation/postgres.md ("Durable before answered").
--
-- A transaction's row lock is released when it commits, and with synchronous_commit on that
-- is after its commit record reached the disk: every writer of a namespace waited for every
-- other's flush in turn. Version 4's dibs.append_commuting commits asynchronously
-- (synchronous_commit off for its own transaction only) when it waited for the lock longer
-- than the client's async_after_us (0 by default: always), so the lock is free as soon as the
-- commit record is in the WAL buffers. The client then makes it durable before it tells
-- anyone: its next statement (queries.sql, "durable") commits a transaction that writes a
-- WAL record and a commit record of its own, later in the WAL, and with synchronous_commit
-- on that commit waits until the WAL is flushed up to it, this append's included. Flushes of
-- several clients are then shared (PostgreSQL's group commit) instead of taken in turn.
--
-- Until that flush, others can read the events (they are committed); a crash before it loses
-- them, with every event after them (the WAL is lost from some point on, and events are
-- committed in seq order under the lock). The client that wrote them was never answered; a
-- client that read them finds out on reconnecting, as every client does after a crash, and
-- then reloads its state (see the store's `_Lost` handling).
--
-- The body is also leaner than version 3's: after the lock, one statement (with
-- data-modifying CTEs) reads what was written since, inserts the events and brings dibs.live
-- in line for acquires and releases, instead of a statement per step and a nested call of
-- dibs.apply_live. It assumes the decision names each resource at most once, which the
-- client checks (`dibs.store.postgres.commuting.params`): two changes of one dibs.live row in
-- one statement would not see each other.

DROP FUNCTION dibs.append_commuting(text, bigint, bigint, text, bigint, boolean, text, bigint,
                                    text[], text[], bigint[], bigint[], text[], text[], text[],
                                    text[], text[], boolean, text[]);

-- The same contract as version 3's (see migrate_003.sql): a claim or release by one agent
-- (mover), decided on the client's state at seq expected, appended moved up past whatever
-- was written since when all of that commutes with it; serialization_failure (40001) on a
-- clash, undoing everything; added 0 when the client's clock estimate was ahead or more than
-- 256 events were written since. It returns one row; flush says it committed without
-- waiting for the disk (see above), which it does only when it waited longer than
-- async_after_us for the lock: when nobody queues, freeing the lock early gains nothing, and
-- a second statement costs both sides.
CREATE FUNCTION dibs.append_commuting(
    ns text, expected bigint, base_token bigint, request_key text, decided_us bigint,
    notify boolean, mover text, mono bigint,
    ops text[], resources text[], tokens bigint[], ttls bigint[], templates text[],
    scopes text[], reads text[], above text[], below text[], root boolean, harmless text[],
    async_after_us bigint,
    OUT added bigint, OUT micros bigint, OUT moved bigint, OUT lifted bigint,
    OUT count bigint, OUT bodies text, OUT flush boolean)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(ops);
    acquires integer := cardinality(array_positions(ops, 'acquire'));
    first bigint;
    clash boolean;
    locked_us bigint;
BEGIN
    micros := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    added := 0;
    moved := 0;
    lifted := 0;
    count := 0;
    bodies := '';
    flush := false;
    IF decided_us IS NOT NULL AND decided_us > micros THEN
        RETURN;
    END IF;
    -- The lock: the UPDATE that moves the counters (the new tokens are the acquires',
    -- base_token + 1, ..., moved up past the tokens handed out since).
    UPDATE dibs.namespaces x
    SET seq = x.seq + n, last_token = x.last_token + acquires
    WHERE x.name = ns AND x.seq BETWEEN expected AND expected + 256
      AND x.last_token >= base_token
    RETURNING x.seq - n, x.last_token - base_token - acquires INTO first, lifted;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    locked_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    moved := first - expected;
    -- A new statement, so a new snapshot: it sees every event committed before the lock was
    -- granted. The CTEs all read that snapshot: "since" does not see the rows "written" adds.
    WITH since AS (
        SELECT count(*) AS count,
               coalesce(string_agg(e.body, E'\n' ORDER BY e.seq), '') AS bodies,
               coalesce(bool_or(
                   e.agent = mover
                   OR e.op <> ALL (harmless)
                   OR (e.resource IS NOT NULL AND (
                       e.scope IS NULL
                       OR dibs.scope_clashes(e.scope, reads, above, below, root)))), false)
                   AS clash
        FROM dibs.events e WHERE e.namespace = ns AND e.seq > expected
    ), new AS (
        SELECT first + e.i AS seq, e.op, e.resource,
               CASE WHEN e.op = 'acquire' THEN e.token + lifted ELSE e.token END AS token,
               e.ttl, e.template, e.scope
        FROM unnest(ops, resources, tokens, ttls, templates, scopes)
            WITH ORDINALITY AS e(op, resource, token, ttl, template, scope, i)
    ), written AS (
        INSERT INTO dibs.events (namespace, seq, op, agent, resource, token, request, body,
                                 scope)
        SELECT ns, w.seq, w.op, mover, w.resource, w.token,
               CASE WHEN w.seq = first + 1 THEN request_key END,
               replace(replace(replace(w.template, E'\x01', w.seq::text),
                                       E'\x02', coalesce(w.token::text, '')),
                       E'\x03', (first + 1)::text),
               w.scope
        FROM new w
    ), taken AS (
        -- dibs.apply_live's acquire: the lease's row, and the agent seen at mono.
        INSERT INTO dibs.live AS l (namespace, agent, resource, token, ttl_ns, expires)
        SELECT ns, mover, t.resource, t.token, t.ttl, mono + t.ttl
        FROM new t WHERE t.op = 'acquire'
        ON CONFLICT (namespace, agent, resource) DO UPDATE
        SET token = excluded.token, ttl_ns = excluded.ttl_ns, expires = excluded.expires
    ), seen AS (
        UPDATE dibs.live SET expires = mono + ttl_ns
        WHERE acquires > 0 AND namespace = ns AND agent = mover AND resource = ''
    ), freed AS (
        -- dibs.apply_live's release (inbox-read and refuse change no row).
        DELETE FROM dibs.live
        WHERE namespace = ns AND agent = mover
          AND resource IN (SELECT f.resource FROM new f WHERE f.op = 'release')
    )
    SELECT s.count, s.bodies, s.clash INTO count, bodies, clash FROM since s;
    IF clash OR count <> moved THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = 'dibs: a write made since clashes with this claim or release';
    END IF;
    IF notify THEN
        PERFORM pg_notify('dibs', ns || ':' || (first + n));
    END IF;
    -- Writers queue for the lock (this one waited for it longer than async_after_us): free
    -- it at COMMIT without waiting for the disk, and tell the client to flush next.
    IF locked_us - micros > async_after_us THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        flush := true;
    END IF;
    added := n;
    micros := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
END
$$;
