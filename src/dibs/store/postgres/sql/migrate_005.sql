-- dibs schema version 5: a commuting append and its flush in one round trip.
-- See docs/explanation/postgres.md ("Durable before answered").
--
-- Version 4's dibs.append_commuting commits asynchronously when it waited for the namespace
-- lock, and the client then sent a second statement that made it durable before it answered
-- anyone. dibs.append_commuting_durable does both on the server, between one CALL and its
-- answer: it calls dibs.append_commuting and, when that committed without waiting for the
-- disk (flush), commits there (the lock is free), then writes one WAL record (a
-- transactional logical-decoding message, as queries.sql's "durable") in a transaction of
-- its own that the CALL commits with synchronous_commit on: that commit waits until the WAL
-- is on disk up to it, the append's commit record included. The client's answer comes only
-- after that commit, so a client is told of an append only once it is durable, as before,
-- and pays one statement instead of two.
--
-- A procedure may commit only when it is called outside a transaction block, as the store's
-- connections (autocommit) call it. Lost between the two commits, the append is settled as
-- before: the client finds its request and runs "durable" itself (Session._settle).

CREATE PROCEDURE dibs.append_commuting_durable(
    ns text, expected bigint, base_token bigint, request_key text, decided_us bigint,
    notify boolean, mover text, mono bigint,
    ops text[], resources text[], tokens bigint[], ttls bigint[], templates text[],
    scopes text[], reads text[], above text[], below text[], root boolean, harmless text[],
    async_after_us bigint,
    INOUT added bigint DEFAULT NULL, INOUT micros bigint DEFAULT NULL,
    INOUT moved bigint DEFAULT NULL, INOUT lifted bigint DEFAULT NULL,
    INOUT count bigint DEFAULT NULL, INOUT bodies text DEFAULT NULL,
    INOUT flush boolean DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT a.added, a.micros, a.moved, a.lifted, a.count, a.bodies, a.flush
    INTO added, micros, moved, lifted, count, bodies, flush
    FROM dibs.append_commuting(ns, expected, base_token, request_key, decided_us, notify,
                               mover, mono, ops, resources, tokens, ttls, templates, scopes,
                               reads, above, below, root, harmless, async_after_us) a;
    IF flush THEN
        COMMIT;
        PERFORM pg_logical_emit_message(true, 'dibs', '');
    END IF;
END
$$;
