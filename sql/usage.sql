-- pg_byok record of uses: what byok.use_key leaves behind.
--
-- use_key (Rust, src/use_key.rs) counts each use in shared memory per
-- (database, key, calling role, hour); the background worker
-- (src/usage_worker.rs) adds the counts to byok.key_usage every
-- byok.usage_flush_interval seconds through byok._count_uses, which also
-- moves keys.last_used_at (to the hour). Where shared memory
-- cannot take a use (not preloaded, another database than the worker's,
-- every slot taken) use_key calls byok._count_uses itself, in the caller's
-- transaction. byok.key_usage_live shows the counters not yet flushed (on a
-- hot standby: all of them). Runs after the Rust functions; grants for what
-- it adds are at its end.

CREATE TABLE byok.key_usage (
    key_id       uuid NOT NULL,
    workspace_id uuid NOT NULL,
    vendor       text NOT NULL CHECK (vendor IN ('anthropic', 'openai')),
    -- The caller as byok._caller() names it (its role at the time of the flush).
    role         text NOT NULL,
    hour         timestamptz NOT NULL,
    uses         bigint NOT NULL CHECK (uses > 0),
    last_used_at timestamptz NOT NULL,
    PRIMARY KEY (key_id, role, hour)
) WITH (fillfactor = 70);  -- room for the flush's in-place (HOT) additions
CREATE INDEX key_usage_by_workspace ON byok.key_usage (workspace_id, hour);
COMMENT ON TABLE byok.key_usage IS
    'pg_byok: use_key calls per key, calling role and hour (flushed from shared memory)';

-- Add counted uses (parallel arrays: key, role oid, hour, uses, last use).
-- A counter whose row exists is added to it in place: key_usage keeps room
-- on its pages (fillfactor) so that update is HOT and touches no index,
-- and it needs no look at byok.keys. Only a new (key, role, hour) row
-- reads its key, for the workspace and vendor it records, and moves
-- keys.last_used_at (at most once an hour, so flushes do not bloat
-- byok.keys and the index use_key reads). Keys that no longer exist (or
-- that this transaction cannot see) are left out and returned, so the
-- worker keeps their counters for a while instead of losing them.
CREATE FUNCTION byok._count_uses(key_ids uuid[], role_ids bigint[], hours timestamptz[],
                                 uses bigint[], last_used timestamptz[])
RETURNS uuid[]
-- Planned for each call's own arrays (plan_cache_mode): a generic plan
-- would guess ten counters and could join thousands in nested loops.
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    missing uuid[];
BEGIN
    WITH u AS (
        SELECT c.key_id, coalesce(r.rolname::text, 'role ' || c.role_id) AS role, c.hour,
               sum(c.uses)::bigint AS uses, max(c.last_used) AS last_used
          FROM unnest(key_ids, role_ids, hours, uses, last_used)
                 AS c(key_id, role_id, hour, uses, last_used)
          LEFT JOIN pg_roles r ON r.oid = c.role_id::oid
         GROUP BY 1, 2, 3
    ), added AS (
        UPDATE byok.key_usage t
           SET uses = t.uses + u.uses,
               last_used_at = greatest(t.last_used_at, u.last_used)
          FROM u
         WHERE t.key_id = u.key_id AND t.role = u.role AND t.hour = u.hour
        RETURNING t.key_id, t.role, t.hour
    ), fresh AS MATERIALIZED (
        -- Counters `added` found no row for, with their keys where they exist.
        SELECT u.*, k.id AS found, k.workspace_id, k.vendor, k.last_used_at AS key_last_used
          FROM u
          LEFT JOIN added a ON a.key_id = u.key_id AND a.role = u.role AND a.hour = u.hour
          LEFT JOIN byok.keys k ON k.id = u.key_id
         WHERE a.key_id IS NULL
    ), counted AS (
        -- ON CONFLICT: a use written through by use_key itself may have
        -- created the row since this statement's snapshot.
        INSERT INTO byok.key_usage AS t (key_id, workspace_id, vendor, role, hour, uses, last_used_at)
        SELECT f.key_id, f.workspace_id, f.vendor, f.role, f.hour, f.uses, f.last_used
          FROM fresh f WHERE f.found IS NOT NULL
        ON CONFLICT (key_id, role, hour) DO UPDATE
           SET uses = t.uses + excluded.uses,
               last_used_at = greatest(t.last_used_at, excluded.last_used_at)
        RETURNING t.key_id
    ), touched AS (
        UPDATE byok.keys k SET last_used_at = l.at
          FROM (SELECT f.key_id, max(f.last_used) AS at FROM fresh f
                 WHERE f.found IS NOT NULL
                   AND (f.key_last_used IS NULL OR f.key_last_used < date_trunc('hour', f.last_used))
                 GROUP BY f.key_id) l
         WHERE k.id = l.key_id
           AND (k.last_used_at IS NULL OR k.last_used_at < date_trunc('hour', l.at))
        RETURNING k.id
    )
    SELECT coalesce(array_agg(DISTINCT f.key_id), '{}') INTO missing
      FROM fresh f WHERE f.found IS NULL;
    RETURN missing;
END
$$;

-- The counters in shared memory, not yet in byok.key_usage.
CREATE VIEW byok.key_usage_live AS
    SELECT d.datname::text AS database, c.key_id,
           coalesce(r.rolname::text, 'role ' || c.role_oid) AS role,
           c.hour, c.uses, c.last_used_at
      FROM byok._usage_counters() c
      LEFT JOIN pg_catalog.pg_database d ON d.oid = c.database_oid::oid
      LEFT JOIN pg_catalog.pg_roles r ON r.oid = c.role_oid::oid;
COMMENT ON VIEW byok.key_usage_live IS
    'pg_byok: use_key counts in shared memory not yet flushed to byok.key_usage (all of them on a standby)';

COMMENT ON FUNCTION byok.use_key(uuid, text) IS
    'The plaintext of a workspace''s active key for a vendor, for the moment of a vendor call (counted; audited per call with byok.use_audit = each)';

REVOKE ALL ON byok.key_usage, byok.key_usage_live FROM PUBLIC;
GRANT SELECT ON byok.key_usage, byok.key_usage_live TO byok_admin;
GRANT EXECUTE ON FUNCTION byok._usage_counters(), byok.usage_status() TO byok_admin;
