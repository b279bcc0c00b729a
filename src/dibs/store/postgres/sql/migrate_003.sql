-- dibs schema version 3: claims and releases that commute with what was written meanwhile
-- are appended in one statement, without a client round trip under the namespace lock.
-- See docs/explanation/postgres.md ("Writes that commute") for why this is safe.

-- What an event's resource can stand in the way of, written by the client that appends it
-- (`dibs.core.resources.scope`): the resource's text for most kinds; for a path, 'path:'
-- and the folder every file it covers lies under. NULL for events without a resource, and
-- for events written before version 3 (a commuting append treats those as clashing).
ALTER TABLE dibs.events ADD COLUMN scope text;

-- Whether a resource of scope s may overlap one of a decision's, given as arrays the client
-- made of them (`dibs.store.postgres.commuting.probe`): reads (the scopes themselves),
-- above (the folders above its path scopes), below (LIKE patterns for what lies beneath
-- them) and root (one is 'path:', every path). The same answer as
-- `dibs.core.resources.scopes_may_overlap` against each (tests/integration/
-- test_postgres_commuting.py), in array operators only: a plain SQL expression the planner
-- inlines, with no subquery per event under the namespace lock.
CREATE FUNCTION dibs.scope_clashes(s text, reads text[], above text[], below text[],
                                   root boolean) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT s = ANY (reads)
        OR (starts_with(s, 'path:')
            AND (root OR (s = 'path:' AND cardinality(below) > 0)
                 OR s = ANY (above) OR s LIKE ANY (below)))
$$;

-- Version 3 of dibs.append: the same, and it records each event's scope.
DROP FUNCTION dibs.append(text, bigint, bigint, bigint, bigint, text, bigint, text, bigint[],
                          text[], text[], text[], bigint[], text[], bigint[], bigint[], text[]);
CREATE FUNCTION dibs.append(
    ns text, expected bigint, first_seq bigint, last_seq bigint, new_token bigint,
    request_key text, decided_us bigint, notify text,
    seqs bigint[], ops text[], agents text[], resources text[], tokens bigint[],
    bodies text[], monos bigint[], ttls bigint[], secrets text[], scopes text[]
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
    INSERT INTO dibs.events (namespace, seq, op, agent, resource, token, request, body, scope)
    SELECT ns, e.seq, e.op, e.agent, e.resource, e.token,
           CASE WHEN e.seq = first_seq THEN request_key END, e.body, e.scope
    FROM unnest(seqs, ops, agents, resources, tokens, bodies, scopes)
        AS e(seq, op, agent, resource, token, body, scope);
    PERFORM dibs.apply_live(ns, ops, agents, resources, tokens, seqs, monos, ttls, secrets);
    IF notify <> '' THEN
        PERFORM pg_notify('dibs', notify);
    END IF;
    RETURN QUERY SELECT last_seq - expected,
                        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
END
$$;

-- A claim or release by one agent (mover), decided by the client on its cached state at seq
-- expected, appended in one statement whatever was written since, when all of that commutes
-- with it: no event since is by mover, every one's op is harmless (the client's list,
-- `dibs.store.postgres.commuting.HARMLESS`: ops that change only leases, tables or nothing),
-- and none names a resource whose scope may overlap one the decision read (reads, above,
-- below, root: dibs.scope_clashes; the scopes of the resources the command named and of its
-- events); scopes: each of its events' own. The rules ran on the client; this function decides nothing, it only checks that
-- the rules would have decided the same on the state as it is now.
--
-- The decision's events were numbered from expected + 1 and its new fencing tokens from
-- base_token + 1, all at one time (mono, in the namespace's clock). They move up by the
-- events written since (moved) and by the tokens handed out since (lifted). The client sends
-- each body as a template: the JSON line with the byte 0x01 where the seq goes, 0x02 where an
-- acquire's token goes and 0x03 where the first seq of a several-event transaction goes
-- (control bytes never appear unescaped in JSON text), so every body is exactly the line the
-- client's encoder writes.
--
-- The namespace row is locked by the UPDATE that moves its counters, the first statement after
-- the clock check (one row operation, not a lock and then an update); when the events written
-- since clash, the function raises serialization_failure (SQLSTATE 40001), which undoes that
-- update with everything else: the client then decides under the lock as before.
--
-- Returns added (0: nothing was written: the client's clock estimate was ahead, or more than
-- 256 events were written since, left unread), micros (the server's clock), moved, lifted,
-- and the events written since expected (count, bodies) for the client to catch up with.
CREATE FUNCTION dibs.append_commuting(
    ns text, expected bigint, base_token bigint, request_key text, decided_us bigint,
    notify boolean, mover text, mono bigint,
    ops text[], resources text[], tokens bigint[], ttls bigint[], templates text[],
    scopes text[], reads text[], above text[], below text[], root boolean, harmless text[]
) RETURNS TABLE (added bigint, micros bigint, moved bigint, lifted bigint, count bigint,
                 bodies text)
LANGUAGE plpgsql AS $$
DECLARE
    now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    n integer := array_length(ops, 1);
    cur record;
    between_count bigint := 0;
    between_bodies text := '';
    clash boolean := false;
    new_seqs bigint[] := '{}';
    new_tokens bigint[] := '{}';
BEGIN
    IF decided_us IS NOT NULL AND decided_us > now_us THEN
        RETURN QUERY SELECT 0::bigint, now_us, 0::bigint, 0::bigint, 0::bigint, ''::text;
        RETURN;
    END IF;
    -- The new tokens are the acquires' (base_token + 1, ...), moved up past the tokens handed
    -- out since: the last token grows by the number of acquires.
    UPDATE dibs.namespaces x
    SET seq = x.seq + n,
        last_token = x.last_token + (SELECT count(*) FROM unnest(ops) o WHERE o = 'acquire')
    WHERE x.name = ns AND x.seq BETWEEN expected AND expected + 256
      AND x.last_token >= base_token
    RETURNING x.seq - n AS seq, x.seq - n - expected AS moved,
              x.last_token - base_token
                  - (SELECT count(*) FROM unnest(ops) o WHERE o = 'acquire') AS lifted
    INTO cur;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, now_us, 0::bigint, 0::bigint, 0::bigint, ''::text;
        RETURN;
    END IF;
    IF cur.moved > 0 THEN
        SELECT count(*), coalesce(string_agg(e.body, E'\n' ORDER BY e.seq), ''),
               coalesce(bool_or(
                   e.agent = mover
                   OR e.op <> ALL (harmless)
                   OR (e.resource IS NOT NULL AND (
                       e.scope IS NULL
                       OR dibs.scope_clashes(e.scope, reads, above, below, root)))), false)
        INTO between_count, between_bodies, clash
        FROM dibs.events e WHERE e.namespace = ns AND e.seq > expected;
        IF clash OR between_count <> cur.moved THEN
            RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                MESSAGE = 'dibs: a write made since clashes with this claim or release';
        END IF;
    END IF;
    -- A loop of plain expressions: far cheaper in PL/pgSQL than a query, under the lock.
    FOR i IN 1 .. n LOOP
        new_seqs[i] := cur.seq + i;
        new_tokens[i] := CASE WHEN ops[i] = 'acquire' THEN tokens[i] + cur.lifted
                              ELSE tokens[i] END;
    END LOOP;
    INSERT INTO dibs.events (namespace, seq, op, agent, resource, token, request, body, scope)
    SELECT ns, e.seq, e.op, mover, e.resource, e.token,
           CASE WHEN e.seq = cur.seq + 1 THEN request_key END,
           replace(replace(replace(e.template, E'\x01', e.seq::text),
                                   E'\x02', coalesce(e.token::text, '')),
                   E'\x03', (cur.seq + 1)::text),
           e.scope
    FROM unnest(new_seqs, ops, resources, new_tokens, templates, scopes)
        AS e(seq, op, resource, token, template, scope);
    PERFORM dibs.apply_live(ns, ops, array_fill(mover, ARRAY[n]), resources, new_tokens,
                            new_seqs, array_fill(mono, ARRAY[n]), ttls,
                            array_fill(NULL::text, ARRAY[n]));
    IF notify THEN
        PERFORM pg_notify('dibs', ns || ':' || (cur.seq + n));
    END IF;
    RETURN QUERY SELECT n::bigint, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                        cur.moved, cur.lifted, between_count, between_bodies;
END
$$;
