-- pg_byok bootstrap: roles, the key_info type, and the tables.
--
-- Runs first in CREATE EXTENSION. Everything a caller can see is here, with
-- the guards that belong to a table (the audit trail's append-only
-- triggers); the functions that act on it come after (api.sql, queue.sql,
-- tenancy.sql) and the privileges last (grants.sql). The ciphertext column
-- is never granted.

-- Roles are cluster-wide, so they may already exist (another database, an
-- earlier install); create them only if missing, always NOLOGIN.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'byok_worker') THEN
        CREATE ROLE byok_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'byok_consumer') THEN
        CREATE ROLE byok_consumer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'byok_admin') THEN
        CREATE ROLE byok_admin NOLOGIN;
    END IF;
END
$roles$;
COMMENT ON ROLE byok_worker IS 'pg_byok: may claim and finish validation jobs (the sidecar), nothing else';
COMMENT ON ROLE byok_consumer IS 'pg_byok: may call byok.use_key (the backend that makes vendor calls)';
COMMENT ON ROLE byok_admin IS 'pg_byok: may configure pg_byok (attach, grants) and read its health; never a key';

CREATE TYPE byok.key_info AS (
    id            uuid,
    workspace_id  uuid,
    vendor        text,
    label         text,
    masked        text,
    status        text,
    status_detail text,
    created_at    timestamptz,
    validated_at  timestamptz,
    revoked_at    timestamptz,
    -- The vendor account the key belongs to, as the vendor named it in its
    -- last successful validation (anthropic-organization-id, or
    -- openai-organization[/openai-project]); NULL when it named none.
    vendor_account text
);

CREATE TABLE byok.keys (
    id            uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL,
    vendor        text NOT NULL CHECK (vendor IN ('anthropic', 'openai')),
    label         text CHECK (char_length(label) <= 200),
    masked        text NOT NULL CHECK (char_length(masked) <= 5),
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'active', 'invalid', 'unverified', 'revoked')),
    status_detail text CHECK (char_length(status_detail) <= 1000),
    -- The sealed key (byok-core envelope v1). NULL once the key is invalid or
    -- revoked: a dead key keeps no ciphertext, so no later master-key leak
    -- can recover it.
    ciphertext    bytea,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    validated_at  timestamptz,
    revoked_at    timestamptz,
    -- Why the key was revoked: user, rotated, workspace_deleted, workspace_status.
    revoked_cause text,
    -- Key health (sql/health.sql): when the last validation verdict came and
    -- what it was (valid, invalid, unverified), when use_key last served the
    -- key (to the minute), and the vendor account (see key_info).
    checked_at    timestamptz,
    check_outcome text CHECK (check_outcome IN ('valid', 'invalid', 'unverified')),
    last_used_at  timestamptz,
    vendor_account text CHECK (char_length(vendor_account) <= 200),
    CONSTRAINT keys_dead_keys_hold_no_ciphertext
        CHECK ((status IN ('invalid', 'revoked')) = (ciphertext IS NULL)),
    CONSTRAINT keys_revoked_has_time CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
-- Room on each page, so the usage flush's hourly last_used_at and the
-- validator's verdicts update a row in place (HOT), adding no index entry.
) WITH (fillfactor = 90);
COMMENT ON TABLE byok.keys IS 'pg_byok: workspace-scoped vendor keys, sealed; read through byok.list_keys or RLS';

-- At most one active key per (workspace, vendor): the database enforces the
-- rotation rule, not just the functions.
CREATE UNIQUE INDEX keys_one_active_per_vendor ON byok.keys (workspace_id, vendor)
    WHERE status = 'active';
CREATE INDEX keys_by_workspace ON byok.keys (workspace_id, created_at);
-- Active keys by when they were last checked: byok.enqueue_due_revalidations
-- reads the oldest few on every timer tick.
CREATE INDEX keys_active_by_check ON byok.keys ((coalesce(checked_at, validated_at, created_at)))
    WHERE status = 'active';

ALTER TABLE byok.keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE byok.keys FORCE ROW LEVEL SECURITY;

-- The validation queue. A job is claimable when run_after has passed: a
-- claim pushes run_after to the lease's end, so an expired lease makes the
-- job claimable again without a sweeper. Finished jobs are deleted, so the
-- table (and its one hot index) holds only live work.
-- UNLOGGED, with no foreign key: the queue is derived state (a key awaits
-- validation exactly while it is pending), so it writes no WAL and takes no
-- lock on the key row (add_key's WAL and time: BENCHMARKS.md). A crash or a
-- replica's promotion empties it, and byok._rebuild_lost_queue (health.sql)
-- queues every pending key again; a job whose key row is gone is retired by
-- claim_jobs. (An unlogged table cannot be read on a hot standby; only the
-- primary's sidecar and byok.key_health read this one.)
CREATE UNLOGGED TABLE byok.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id           uuid NOT NULL UNIQUE,
    run_after        timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_token      uuid,
    leased_by        text,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX jobs_ready ON byok.jobs (run_after, id);
COMMENT ON TABLE byok.jobs IS 'pg_byok: pending key validations; claimed with byok.claim_jobs';

-- One row while byok.jobs has survived since it was last (re)built: UNLOGGED
-- like the queue, so the crash that empties the queue empties this too.
CREATE UNLOGGED TABLE byok.queue_intact (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO byok.queue_intact DEFAULT VALUES;

-- Vendor health as reported by the sidecars' circuit breakers.
CREATE TABLE byok.vendor_health (
    vendor      text PRIMARY KEY CHECK (vendor IN ('anthropic', 'openai')),
    state       text NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    detail      text,
    reported_by text,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- No primary key: the identity column orders the trail, and its index would
-- cost every audited call a B-tree insert and its WAL (nothing looks an
-- audit row up by id; readers go by workspace).
CREATE TABLE byok.audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_role   text NOT NULL,
    actor_sub    text,
    action       text NOT NULL
                 CHECK (action IN ('add', 'validate', 'use', 'revoke', 'rotate', 'revalidate',
                                   'report_failure')),
    key_id       uuid,
    workspace_id uuid,
    vendor       text,
    outcome      text,
    detail       text
);
CREATE INDEX audit_log_by_workspace ON byok.audit_log (workspace_id, at);
COMMENT ON TABLE byok.audit_log IS 'pg_byok: append-only record of who did what to which key; never key material';
ALTER TABLE byok.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE byok.audit_log FORCE ROW LEVEL SECURITY;

-- The audit trail is append-only for every role, the owner included. The
-- one way out is retention: pg_byok's background worker deleting rows older
-- than byok.audit_retention_days (src/usage_worker.rs); byok._audit_pruning
-- is true only inside that code path, in that process, for such a row.
CREATE FUNCTION byok._audit_is_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' AND byok._audit_pruning(OLD.at) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('byok.audit_log is append-only: %s is not allowed', TG_OP),
        HINT = 'Audit rows are kept as written; archive them by copying, not by editing.';
END
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON byok.audit_log
    FOR EACH ROW EXECUTE FUNCTION byok._audit_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON byok.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION byok._audit_is_append_only();

-- How byok.authorize finds the caller's workspaces (byok.attach_members).
CREATE TABLE byok.member_source (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    member_table     regclass NOT NULL,
    workspace_column name NOT NULL,
    user_column      name NOT NULL
);

-- Which app tables revoke keys when a workspace goes away (byok.attach_workspaces).
CREATE TABLE byok.workspace_source (
    workspace_table regclass PRIMARY KEY,
    id_column       name NOT NULL,
    status_column   name
);

-- pg_byok's tables are deliberately not extension configuration tables
-- (pg_extension_config_dump): pg_dump would then COPY every column, and a
-- non-superuser running it (postgres on Supabase) would need SELECT on the
-- ciphertext. Their rows are backed up with byok.export_archive() (admin.sql).
