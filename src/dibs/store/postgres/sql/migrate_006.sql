-- dibs schema version 6: a release's notification names what it freed.
-- See docs/explanation/postgres.md ("Waiting for a release").
--
-- `dibs claim --wait` LISTENs for the notification every release sends. Until version 5 the
-- payload said only "namespace:seq", so every release in the namespace woke every waiter,
-- which then read the log, decided again and began a new wait: in a busy namespace a waiter
-- spent its time waking for releases of resources it never asked for. From version 6 the
-- payload may go on with ":" and a JSON array of the scopes (dibs.events.scope) of the
-- resources the write freed; a waiter wakes only when one of them may overlap what it waits
-- for. The locked path (dibs.append) already takes its payload from the client; the commuting
-- path notifies here, in the procedure, with the suffix the client sends (wake): the
-- notification is part of the append's transaction, sent when it commits and never when it
-- does not.
--
-- The procedure of version 5 is replaced, not overloaded: every client of a namespace runs
-- the same schema version (Session._load), and two procedures of one name with defaulted
-- INOUT arguments would make a CALL ambiguous.

DROP PROCEDURE dibs.append_commuting_durable(
    text, bigint, bigint, text, bigint, boolean, text, bigint,
    text[], text[], bigint[], bigint[], text[], text[], text[], text[], text[], boolean, text[],
    bigint, bigint, bigint, bigint, bigint, bigint, text, boolean);

CREATE PROCEDURE dibs.append_commuting_durable(
    ns text, expected bigint, base_token bigint, request_key text, decided_us bigint,
    notify boolean, mover text, mono bigint,
    ops text[], resources text[], tokens bigint[], ttls bigint[], templates text[],
    scopes text[], reads text[], above text[], below text[], root boolean, harmless text[],
    async_after_us bigint, wake text,
    INOUT added bigint DEFAULT NULL, INOUT micros bigint DEFAULT NULL,
    INOUT moved bigint DEFAULT NULL, INOUT lifted bigint DEFAULT NULL,
    INOUT count bigint DEFAULT NULL, INOUT bodies text DEFAULT NULL,
    INOUT flush boolean DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT a.added, a.micros, a.moved, a.lifted, a.count, a.bodies, a.flush
    INTO added, micros, moved, lifted, count, bodies, flush
    FROM dibs.append_commuting(ns, expected, base_token, request_key, decided_us, false,
                               mover, mono, ops, resources, tokens, ttls, templates, scopes,
                               reads, above, below, root, harmless, async_after_us) a;
    IF notify AND added > 0 THEN
        -- The seq of the append's last event, as dibs.append_commuting numbered it.
        PERFORM pg_notify('dibs', ns || ':' || (expected + moved + added) || wake);
    END IF;
    IF flush THEN
        COMMIT;
        PERFORM pg_logical_emit_message(true, 'dibs', '');
    END IF;
END
$$;
