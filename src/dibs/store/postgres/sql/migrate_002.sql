-- dibs schema version 2: lease expiry outside the log, so that renewals take no namespace lock.
-- See docs/explanation/postgres.md for why each rule below is safe.

-- One row per registered agent (resource '') and per lease (resource = the lease's resource),
-- written by the namespace's lock holder in the same transaction as the events that create,
-- change or end them (dibs.apply_live), and renewed outside the namespace lock by dibs.renew.
-- expires is in the namespace's clock (nanoseconds): a lease's expiry, or for the agent's row
-- the moment it turns stale (last seen + its ttl). The log stays the truth for who holds
-- what; this table is the truth for how long a current lease and agent live.
CREATE TABLE dibs.live (
    namespace text NOT NULL,
    agent text NOT NULL,
    resource text NOT NULL,
    token bigint,
    secret text,
    ttl_ns bigint NOT NULL,
    expires bigint NOT NULL,
    lost_seq bigint NOT NULL DEFAULT 0,
    heartbeat_seq bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, agent, resource)
);

-- Bring the rows in line with a decision's events (called in the transaction that appends
-- them, after the namespace's lock): the same changes `dibs.core.state.apply` makes to a
-- lease's expiry and an agent's last-seen time.
CREATE FUNCTION dibs.apply_live(
    ns text, ops text[], agents text[], resources text[], tokens bigint[], seqs bigint[],
    monos bigint[], ttls bigint[], secrets text[]
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(array_length(ops, 1), 0) LOOP
        CASE ops[i]
        WHEN 'register' THEN
            INSERT INTO dibs.live AS l (namespace, agent, resource, secret, ttl_ns, expires,
                                        heartbeat_seq)
            VALUES (ns, agents[i], '', secrets[i], ttls[i], monos[i] + ttls[i], seqs[i])
            ON CONFLICT (namespace, agent, resource) DO UPDATE
            SET secret = excluded.secret, ttl_ns = excluded.ttl_ns,
                expires = excluded.expires, lost_seq = 0, heartbeat_seq = excluded.heartbeat_seq;
        WHEN 'unregister' THEN
            DELETE FROM dibs.live WHERE namespace = ns AND agent = agents[i];
        WHEN 'heartbeat' THEN
            UPDATE dibs.live
            SET expires = monos[i] + ttl_ns,
                heartbeat_seq = CASE WHEN resource = '' THEN seqs[i] ELSE heartbeat_seq END
            WHERE namespace = ns AND agent = agents[i];
        WHEN 'acquire' THEN
            INSERT INTO dibs.live AS l (namespace, agent, resource, token, ttl_ns, expires)
            VALUES (ns, agents[i], resources[i], tokens[i], ttls[i], monos[i] + ttls[i])
            ON CONFLICT (namespace, agent, resource) DO UPDATE
            SET token = excluded.token, ttl_ns = excluded.ttl_ns, expires = excluded.expires;
            UPDATE dibs.live SET expires = monos[i] + ttl_ns
            WHERE namespace = ns AND agent = agents[i] AND resource = '';
        WHEN 'renew' THEN
            UPDATE dibs.live
            SET ttl_ns = coalesce(ttls[i], ttl_ns), expires = monos[i] + coalesce(ttls[i], ttl_ns)
            WHERE namespace = ns AND agent = agents[i] AND resource = resources[i];
            UPDATE dibs.live SET expires = monos[i] + ttl_ns
            WHERE namespace = ns AND agent = agents[i] AND resource = '';
        WHEN 'release' THEN
            DELETE FROM dibs.live
            WHERE namespace = ns AND agent = agents[i] AND resource = resources[i];
        WHEN 'auto-evict', 'force-evict' THEN
            DELETE FROM dibs.live
            WHERE namespace = ns AND agent = agents[i] AND resource = resources[i];
            UPDATE dibs.live SET lost_seq = seqs[i]
            WHERE namespace = ns AND agent = agents[i] AND resource = '';
        ELSE
            NULL;  -- record, refuse, log-repair: no lease or agent changes
        END CASE;
    END LOOP;
    RETURN coalesce(array_length(ops, 1), 0);
END
$$;

-- The rows of the given (agent, resource) keys; with lock, each is locked until COMMIT (in one
-- order, agent then resource, bytewise) and the clock is read after the locks are granted: a
-- renewal waiting for one of them reads its clock after this transaction ends.
CREATE FUNCTION dibs.live_rows(ns text, keys_agent text[], keys_resource text[], lock boolean)
RETURNS TABLE (micros bigint, agents text[], resources text[], tokens bigint[], secrets text[],
               expires bigint[])
LANGUAGE plpgsql AS $$
BEGIN
    IF lock AND coalesce(array_length(keys_agent, 1), 0) > 0 THEN
        PERFORM 1 FROM dibs.live l, unnest(keys_agent, keys_resource) AS k(agent, resource)
        WHERE l.namespace = ns AND l.agent = k.agent AND l.resource = k.resource
        ORDER BY l.agent COLLATE "C", l.resource COLLATE "C"
        FOR UPDATE OF l;
    END IF;
    RETURN QUERY
    SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
           coalesce(array_agg(l.agent), '{}'), coalesce(array_agg(l.resource), '{}'),
           coalesce(array_agg(l.token), '{}'), coalesce(array_agg(l.secret), '{}'),
           coalesce(array_agg(l.expires), '{}')
    FROM dibs.live l, unnest(keys_agent, keys_resource) AS k(agent, resource)
    WHERE l.namespace = ns AND l.agent = k.agent AND l.resource = k.resource;
END
$$;

-- Round trip 1 of a locked write: lock the namespace row (writers take turns until COMMIT),
-- lock the rows the caller may find expired, then read the clock and every event after
-- since. Each statement of a function takes a new snapshot, so the events are read after the
-- lock was granted: the events of the writer this call waited for are always there.
CREATE FUNCTION dibs.lock_and_read(ns text, since bigint, keys_agent text[],
                                   keys_resource text[])
RETURNS TABLE (seq bigint, boot text, mono_offset bigint, micros bigint, count bigint,
               bodies text, agents text[], resources text[], tokens bigint[], secrets text[],
               expires bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    n record;
    r record;
BEGIN
    SELECT x.seq, x.boot, x.mono_offset INTO n
    FROM dibs.namespaces x WHERE x.name = ns FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO r FROM dibs.live_rows(ns, keys_agent, keys_resource, true);
    RETURN QUERY
    SELECT n.seq, n.boot, n.mono_offset, r.micros, count(*),
           coalesce(string_agg(e.body, E'\n' ORDER BY e.seq), ''),
           r.agents, r.resources, r.tokens, r.secrets, r.expires
    FROM dibs.events e WHERE e.namespace = ns AND e.seq > since;
END
$$;

-- A renewal or heartbeat outside the namespace lock: one statement, either every named row
-- (everything: every row of the agent) is extended to now + its ttl, or none is and the
-- caller decides under the lock instead. It renews only what the lock holder's rules would:
-- the agent's session token matches, every lease is the one the caller holds (same token),
-- nothing is expired at the clock read after the rows were locked (an expired lease is
-- evicted only under the lock; a renewal never revives one), the set of leases is exactly
-- what the caller expects, and (everything) no lease was lost since the last logged
-- heartbeat (that loss is reported by the rules). A row locked by the lock holder makes it
-- give up at once rather than wait. Returns the clock in microseconds, or NULL.
CREATE FUNCTION dibs.renew(ns text, who text, secret_hash text, everything boolean,
                           want_resources text[], want_tokens bigint[], at_mono bigint,
                           offset_ns bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    now_us bigint;
    now_ns bigint;
    a record;
    got_resources text[];
    got_tokens bigint[];
    all_live boolean;
BEGIN
    BEGIN
        PERFORM 1 FROM dibs.live l
        WHERE l.namespace = ns AND l.agent = who
          AND (everything OR l.resource = '' OR l.resource = ANY (want_resources))
        ORDER BY l.resource COLLATE "C"
        FOR UPDATE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        RETURN NULL;
    END;
    now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    now_ns := coalesce(at_mono, now_us * 1000 - offset_ns);
    SELECT * INTO a FROM dibs.live l WHERE l.namespace = ns AND l.agent = who AND l.resource = '';
    IF NOT FOUND OR a.secret IS DISTINCT FROM secret_hash OR a.expires <= now_ns
       OR (everything AND a.lost_seq > a.heartbeat_seq) THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(array_agg(l.resource ORDER BY l.resource COLLATE "C"), '{}'),
           coalesce(array_agg(l.token ORDER BY l.resource COLLATE "C"), '{}'),
           coalesce(bool_and(l.expires > now_ns), true)
    INTO got_resources, got_tokens, all_live
    FROM dibs.live l
    WHERE l.namespace = ns AND l.agent = who AND l.resource <> ''
      AND (everything OR l.resource = ANY (want_resources));
    IF NOT all_live OR got_resources <> want_resources OR got_tokens <> want_tokens THEN
        RETURN NULL;
    END IF;
    UPDATE dibs.live l SET expires = now_ns + l.ttl_ns
    WHERE l.namespace = ns AND l.agent = who
      AND (everything OR l.resource = '' OR l.resource = ANY (want_resources));
    RETURN now_us;
END
$$;

-- Append a decision's events, move the namespace's counters and bring dibs.live in line, in
-- one statement. The events go in only if the namespace is still at expected, the state the
-- decision was made on, and the server's clock has reached the time it was made at
-- (decided_us; NULL when the server's own reading was used, or with a test clock): a stale
-- decision inserts nothing. Used alone in autocommit (the optimistic path: no lock held
-- across a round trip) and inside the locked transaction. Returns the number of events added
-- (0: not current; decide again) and the server's clock; it wakes `dibs claim --wait` in
-- other clients when something was released (notify not empty).
CREATE FUNCTION dibs.append(
    ns text, expected bigint, first_seq bigint, last_seq bigint, new_token bigint,
    request_key text, decided_us bigint, notify text,
    seqs bigint[], ops text[], agents text[], resources text[], tokens bigint[],
    bodies text[], monos bigint[], ttls bigint[], secrets text[]
) RETURNS TABLE (added bigint, micros bigint) LANGUAGE plpgsql AS $$
DECLARE
    now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
BEGIN
    IF decided_us IS NOT NULL AND decided_us > now_us THEN
        RETURN QUERY SELECT 0::bigint, now_us;
        RETURN;
    END IF;
    UPDATE dibs.namespaces
    SET seq = last_seq, last_token = greatest(last_token, new_token)
    WHERE name = ns AND seq = expected;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, now_us;
        RETURN;
    END IF;
    INSERT INTO dibs.events (namespace, seq, op, agent, resource, token, request, body)
    SELECT ns, e.seq, e.op, e.agent, e.resource, e.token,
           CASE WHEN e.seq = first_seq THEN request_key END, e.body
    FROM unnest(seqs, ops, agents, resources, tokens, bodies)
        AS e(seq, op, agent, resource, token, body);
    PERFORM dibs.apply_live(ns, ops, agents, resources, tokens, seqs, monos, ttls, secrets);
    IF notify <> '' THEN
        PERFORM pg_notify('dibs', notify);
    END IF;
    RETURN QUERY SELECT last_seq - expected,
                        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
END
$$;
