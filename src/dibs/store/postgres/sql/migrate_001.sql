-- dibs schema version 1: namespaces, the event log, checkpoints.
-- Applied by `dibs init --store postgresql://...` in one transaction; see
-- docs/reference/postgres.md for what each table holds.

CREATE SCHEMA IF NOT EXISTS dibs;

-- One row per migration applied; the highest version is the schema's version.
CREATE TABLE dibs.schema_version (
    version integer PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT clock_timestamp(),
    dibs text NOT NULL
);

-- One row per namespace (a repository, or a team's set of repositories). Every write to a
-- namespace locks its row (SELECT ... FOR UPDATE) for the length of one transaction: this
-- serialises decisions per namespace, overlapping globs included. seq and last_token are the
-- namespace's two counters; boot and mono_offset define its clock (the server's
-- clock_timestamp() in nanoseconds minus mono_offset; boot never changes).
CREATE TABLE dibs.namespaces (
    name text PRIMARY KEY,
    boot text NOT NULL,
    mono_offset bigint NOT NULL DEFAULT 0,
    seq bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
    last_token bigint NOT NULL DEFAULT 0 CHECK (last_token >= 0),
    created timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The log: one row per event, seq contiguous per namespace. body is the event's JSON line
-- exactly as the local store would write it (without the newline); op, agent, resource and
-- token are copied out for queries. request is the idempotency key of the transaction, on
-- its first event only.
CREATE TABLE dibs.events (
    namespace text NOT NULL,
    seq bigint NOT NULL CHECK (seq > 0),
    op text NOT NULL,
    agent text,
    resource text,
    token bigint,
    request text,
    body text NOT NULL,
    PRIMARY KEY (namespace, seq)
);
CREATE UNIQUE INDEX events_request ON dibs.events (namespace, request)
    WHERE request IS NOT NULL;

-- Append-only: nothing updates or deletes an event (TRUNCATE by an administrator aside).
CREATE FUNCTION dibs.events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dibs.events is append-only: % of seq % refused', TG_OP, OLD.seq;
END
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON dibs.events
    FOR EACH ROW EXECUTE FUNCTION dibs.events_append_only();

-- Checkpoints: the state of a namespace at some seq, so that a new client loads the state and
-- the short tail after it instead of replaying the whole history. A cache: deleting any or
-- all of them loses nothing.
CREATE TABLE dibs.checkpoints (
    namespace text NOT NULL,
    seq bigint NOT NULL,
    state text NOT NULL,
    written timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (namespace, seq)
);
