-- pg_byok upgrade 0.1.0 → 0.2.0, run by `ALTER EXTENSION pg_byok UPDATE TO '0.2.0'`.
--
-- Hand-written: tables are altered in place, never dropped and re-created,
-- and data migrations run here, so an installed database keeps every key.
-- Functions are replaced. After this script, the catalog must equal that of
-- a fresh CREATE EXTENSION at 0.2.0 (the upgrade test compares them).
--
-- Sections, in order: the security fixes, then the release's own changes.
\echo Use "ALTER EXTENSION pg_byok UPDATE TO '0.2.0'" to load this file. \quit

-- security: queue, explain, utility hook, encoding
-- (one section per finding; each replaces whole functions, so it equals the
-- files under sql/ the fresh install runs)

-- Finding 10: pg_byok 0.2.0 works in UTF8 databases only (sql/encoding.sql
-- refuses CREATE EXTENSION elsewhere); an install in another encoding is
-- refused here too, so no 0.2.0 catalog exists outside UTF8.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('pg_byok needs a UTF8 database; database %I is %s',
                             pg_catalog.current_database(), pg_catalog.getdatabaseencoding()),
            HINT = 'Install pg_byok in a database created with ENCODING ''UTF8'' '
                   '(CREATE DATABASE ... TEMPLATE template0 ENCODING ''UTF8''), '
                   'or dump this one and restore it into such a database.';
    END IF;
END
$encoding$;

-- Finding 4: a revocation deletes its keys' jobs in a statement of its own
-- (seeing jobs queued by a transaction it waited for), and claim_jobs
-- retires a job whose key is dead instead of failing the batch.
CREATE OR REPLACE FUNCTION byok._revoke(key_ids uuid[], workspace_ids uuid[], reason text, cause text)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    revoked_ids uuid[];
BEGIN
    WITH revoked AS (
        UPDATE byok.keys k
           SET status = 'revoked', ciphertext = NULL, revoked_at = clock_timestamp(),
               revoked_cause = cause, status_detail = reason
         WHERE (k.id = ANY (key_ids) OR k.workspace_id = ANY (workspace_ids))
           AND k.status NOT IN ('revoked', 'invalid')
        RETURNING k.id, k.workspace_id, k.vendor
    ), audited AS (
        INSERT INTO byok.audit_log (actor_role, actor_sub, action, key_id, workspace_id, vendor, outcome, detail)
        SELECT byok._caller(), byok._jwt_sub(), 'revoke', r.id, r.workspace_id, r.vendor, cause, reason
          FROM revoked r
    )
    SELECT coalesce(array_agg(r.id), '{}') INTO revoked_ids FROM revoked r;
    -- The jobs go in a statement of their own, with a snapshot taken after
    -- the UPDATE: a job queued by a transaction that held a key's row lock
    -- (revalidate_key) and committed while the UPDATE waited for it is
    -- invisible to the UPDATE's snapshot, and would outlive its key.
    DELETE FROM byok.jobs j WHERE j.key_id = ANY (revoked_ids);
    RETURN cardinality(revoked_ids);
END
$$;

CREATE OR REPLACE FUNCTION byok.claim_jobs(worker text, max_jobs integer DEFAULT 16, lease_seconds integer DEFAULT 60)
RETURNS TABLE(job_id bigint, key_id uuid, workspace_id uuid, vendor text, api_key text,
              attempt integer, lease_token uuid)
-- work_mem: the result (plaintext keys) is built in a tuplestore, which must
-- never spill to a temporary file; 1,000 keys need well under 1 MB.
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET work_mem = '4MB' AS $$
#variable_conflict use_column
DECLARE
    who text := byok._check_worker_args(claim_jobs.worker);
    limit_attempts integer := byok._max_attempts();
    r record;
BEGIN
    IF claim_jobs.max_jobs IS NULL OR claim_jobs.max_jobs NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'max_jobs must be between 1 and 1000',
            HINT = 'Claim small batches; call again for more.';
    END IF;
    IF claim_jobs.lease_seconds IS NULL OR claim_jobs.lease_seconds NOT BETWEEN 5 AND 3600 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'lease_seconds must be between 5 and 3600',
            HINT = 'Use a lease a little longer than the vendor request timeout.';
    END IF;
    -- No keyring at all is the operator's problem and fails the call (55000);
    -- a key needing an absent version only defers that key (below).
    PERFORM byok.master_key_status();
    FOR r IN
        WITH picked AS (
            SELECT j.id FROM byok.jobs j
             WHERE j.run_after <= clock_timestamp()
             ORDER BY j.run_after, j.id
             LIMIT claim_jobs.max_jobs
             FOR UPDATE SKIP LOCKED
        )
        UPDATE byok.jobs j
           SET attempts = j.attempts + 1, lease_token = gen_random_uuid(), leased_by = who,
               run_after = clock_timestamp() + make_interval(secs => claim_jobs.lease_seconds)
          FROM picked p
         WHERE j.id = p.id
        RETURNING j.id, j.key_id, j.attempts, j.lease_token
    LOOP
        IF r.attempts > limit_attempts THEN
            PERFORM byok._give_up(r.id);
            CONTINUE;
        END IF;
        DECLARE
            k byok.keys;
        BEGIN
            SELECT * INTO k FROM byok.keys WHERE id = r.key_id;
            IF NOT FOUND OR k.ciphertext IS NULL THEN
                -- The key died (revoked, rotated, invalid) after its job was
                -- queued: nothing is left to validate. Retire the job rather
                -- than fail the batch for every worker.
                DELETE FROM byok.jobs WHERE id = r.id;
                RAISE WARNING 'pg_byok: job % was for key %, which is %; the job was retired',
                    r.id, r.key_id, coalesce(k.status, 'gone');
                CONTINUE;
            END IF;
            job_id := r.id; key_id := k.id; workspace_id := k.workspace_id; vendor := k.vendor;
            attempt := r.attempts; lease_token := r.lease_token;
            api_key := byok._open(k.id, k.workspace_id, k.vendor, k.ciphertext);
            RETURN NEXT;
        EXCEPTION WHEN data_corrupted THEN
            -- A ciphertext that fails authentication can never be validated:
            -- retire the key with a clear reason rather than block the queue.
            UPDATE byok.keys SET status = 'invalid', ciphertext = NULL,
                   status_detail = 'the stored ciphertext failed authentication (tampered or corrupted); add the key again'
             WHERE id = r.key_id;
            DELETE FROM byok.jobs WHERE id = r.id;
            PERFORM byok._audit('validate', r.key_id, k.workspace_id, k.vendor, 'tampered', NULL);
            RAISE WARNING 'pg_byok: key % failed authentication and was retired', r.key_id;
        WHEN object_not_in_prerequisite_state THEN
            -- The master key version this key needs is absent or different:
            -- keep the key, hand the job back without spending the attempt,
            -- and let the rest of the queue flow.
            UPDATE byok.jobs SET attempts = greatest(attempts - 1, 0), lease_token = NULL, leased_by = NULL,
                   run_after = clock_timestamp() + interval '5 minutes', last_error = left(SQLERRM, 500)
             WHERE id = r.id;
            RAISE WARNING 'pg_byok: key % cannot be decrypted with this keyring: %', r.key_id, SQLERRM;
        END;
    END LOOP;
END
$$;

-- Finding 8: members read keys through byok.list_keys only; the column
-- SELECT on byok.keys that grant_supabase_roles gave authenticated goes.
CREATE OR REPLACE FUNCTION byok.grant_supabase_roles() RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    granted text[] := '{}';
    member_functions text := 'byok.add_key(uuid, text, text, text), byok.list_keys(uuid),
        byok.revoke_key(uuid, text), byok.revalidate_key(uuid), byok.mask(text), byok.redact(text),
        byok.authorize(uuid)';
    key_columns text := '(id, workspace_id, vendor, label, masked, status, status_detail,
        created_at, validated_at, revoked_at)';
BEGIN
    PERFORM byok._require_superuser('grant pg_byok to Supabase''s roles');
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        -- anon reaches nothing, even if defaults elsewhere granted it something.
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA byok FROM anon;
        REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM anon;
        REVOKE ALL ON SCHEMA byok FROM anon;
        granted := granted || 'anon (nothing)'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA byok FROM authenticated;
        REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM authenticated;
        GRANT USAGE ON SCHEMA byok TO authenticated;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO authenticated', member_functions);
        granted := granted || 'authenticated'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA byok FROM service_role;
        REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM service_role;
        GRANT USAGE ON SCHEMA byok TO service_role;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s, byok.revoke_workspace(uuid, text) TO service_role',
                       member_functions);
        EXECUTE format('GRANT SELECT %s ON byok.keys TO service_role', key_columns);
        GRANT SELECT ON byok.audit_log, byok.vendor_status TO service_role;
        -- Supabase creates service_role NOINHERIT: membership alone would not
        -- carry byok_consumer's EXECUTE, so use_key is granted directly too.
        GRANT byok_consumer TO service_role;
        GRANT EXECUTE ON FUNCTION byok.use_key(uuid, text) TO service_role;
        granted := granted || 'service_role'::text;
    END IF;
    RETURN granted;
END
$$;

DO $revoke_member_select$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        -- Revoking the table privilege revokes its column privileges too.
        REVOKE SELECT ON byok.keys FROM authenticated;
    END IF;
END
$revoke_member_select$;

-- end of section: security: queue, explain, utility hook, encoding

-- security: tenancy
--
-- Reads of app tables (membership, add_key's workspace state, the TRUNCATE
-- trigger) now run as the table's owner, under a lock taken by OID, through
-- the Rust functions below (src/app_tables.rs). Workspace tables must be
-- plain tables without inheritance; rows inserted inactive revoke keys; text
-- ids are compared as uuids; byok.attachment_problems() reports attached
-- tables whose revocation was switched off. Every attached table gets its
-- triggers again (the new INSERT trigger among them).

CREATE FUNCTION byok."_lock_app_table"("tbl" oid) RETURNS bool
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'lock_app_table_wrapper';
CREATE FUNCTION byok."_is_member"("member_table" oid, "workspace_column" TEXT, "user_column" TEXT,
                                  "workspace_id" uuid, "subject" uuid) RETURNS bool
STRICT STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'is_member_wrapper';
CREATE FUNCTION byok."_workspace_row_state"("workspace_table" oid, "id_column" TEXT, "status_column" TEXT,
                                            "workspace_id" uuid) RETURNS TEXT
STABLE
LANGUAGE c
AS 'MODULE_PATHNAME', 'workspace_row_state_wrapper';
CREATE FUNCTION byok."_workspace_ids"("workspace_table" oid, "id_column" TEXT) RETURNS TEXT[]
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'workspace_ids_wrapper';

CREATE OR REPLACE FUNCTION byok._as_uuid(value text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN value ~* '^\s*(\{[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}|[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})\s*$'
                THEN btrim(value, E' \t\n\r\f\x0B')::uuid END
$$;

CREATE OR REPLACE FUNCTION byok.authorize(workspace_id uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    src byok.member_source;
    sub uuid;
BEGIN
    IF authorize.workspace_id IS NULL THEN
        RETURN false;
    END IF;
    IF byok._caller_is_trusted() THEN
        RETURN true;
    END IF;
    SELECT * INTO src FROM byok.member_source;
    IF NOT FOUND THEN
        RETURN false;  -- nothing configured: closed by default
    END IF;
    sub := byok._as_uuid(byok._jwt_sub());
    IF sub IS NULL THEN
        RETURN false;
    END IF;
    -- Locks the table by OID, checks it, and queries it as its owner
    -- (app_tables.rs): planning it runs the owner's code, never ours.
    RETURN coalesce(byok._is_member(src.member_table, src.workspace_column, src.user_column,
                                    authorize.workspace_id, sub), false);
END
$$;

CREATE OR REPLACE FUNCTION byok._is_plain_table(tbl regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT relkind = 'r' FROM pg_class WHERE oid = tbl), false)
$$;

CREATE OR REPLACE FUNCTION byok._uuid_column_type(tbl regclass, col name, what text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typ text;
BEGIN
    PERFORM byok._require(col, what);
    IF NOT byok._is_plain_table(tbl) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s is not a plain table', tbl),
            HINT = 'Point pg_byok at a plain table: not a view, a foreign or a partitioned table.';
    END IF;
    typ := byok._column_type(tbl, col);
    IF typ IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('table %s has no column %I', tbl, col),
            HINT = format('Pass the name of the column that holds the %s.', what);
    END IF;
    IF NOT byok._id_type_ok(typ) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('column %I of %s is of type %s; pg_byok needs uuid or text', col, tbl, typ),
            HINT = 'Point pg_byok at a column of type uuid, or text holding uuids.';
    END IF;
    RETURN typ;
END
$$;

CREATE OR REPLACE FUNCTION byok._check_workspace_table(tbl regclass, id_col name, status_col name) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    problem text;
BEGIN
    IF NOT byok._lock_app_table(tbl) THEN
        problem := 'no longer exists';
    ELSIF NOT byok._is_plain_table(tbl) THEN
        problem := 'is no longer a plain table';
    ELSE
        problem := byok._inheritance_problem(tbl);
    END IF;
    IF problem IS NULL AND (NOT byok._id_type_ok(byok._column_type(tbl, id_col))
       OR (status_col IS NOT NULL AND NOT byok._status_type_ok(byok._column_type(tbl, status_col)))) THEN
        problem := 'no longer has the columns byok.attach_workspaces checked';
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('workspace table %s %s; its workspaces'' keys cannot be revoked with them', tbl, problem),
            HINT = 'Run byok.attach_workspaces again for this table (a plain table without inheritance; '
                   'id: uuid or text; status: text or enum), or byok.detach_workspaces.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION byok._on_workspace_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids uuid[];
BEGIN
    PERFORM byok._check_workspace_table(TG_RELID::regclass, TG_ARGV[0], NULL);
    IF TG_OP = 'TRUNCATE' THEN
        SELECT array_agg(DISTINCT byok._as_uuid(t.id)) INTO ids
          FROM unnest(byok._workspace_ids(TG_RELID, TG_ARGV[0])) AS t(id);
    ELSE
        EXECUTE format('SELECT array_agg(DISTINCT byok._as_uuid(%I::text)) FROM byok_old_rows', TG_ARGV[0])
           INTO ids;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM byok._revoke(NULL, ids, 'workspace deleted', 'workspace_deleted');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION byok._on_workspace_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    status_col name := nullif(TG_ARGV[1], '');
    gone uuid[];
    r record;
BEGIN
    PERFORM byok._check_workspace_table(TG_RELID::regclass, TG_ARGV[0], status_col);
    EXECUTE format(
        'SELECT array_agg(DISTINCT byok._as_uuid(o.%1$I::text)) FROM byok_old_rows o
          WHERE NOT EXISTS (SELECT 1 FROM byok_new_rows n WHERE n.%1$I = o.%1$I)', TG_ARGV[0])
       INTO gone;
    IF gone IS NOT NULL THEN
        PERFORM byok._revoke(NULL, gone, 'workspace id changed', 'workspace_deleted');
    END IF;
    IF status_col IS NULL THEN
        RETURN NULL;
    END IF;
    FOR r IN EXECUTE byok._inactive_rows_sql(TG_ARGV[0], status_col, true) USING byok._inactive_statuses() LOOP
        PERFORM byok._revoke(NULL, r.ids, format('workspace %s', r.status), 'workspace_' || r.status);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION byok._workspace_state(ws uuid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src byok.workspace_source;
    state text;
    attached boolean := false;
BEGIN
    FOR src IN SELECT * FROM byok.workspace_source LOOP
        attached := true;
        IF NOT byok._lock_app_table(src.workspace_table) THEN
            CONTINUE;
        END IF;
        PERFORM byok._check_workspace_table(src.workspace_table, src.id_column, src.status_column);
        -- Read as the table's owner, uuid spellings compared as uuids.
        state := byok._workspace_row_state(src.workspace_table, src.id_column, src.status_column, ws);
        IF state IS NOT NULL THEN
            RETURN state;
        END IF;
    END LOOP;
    RETURN CASE WHEN attached THEN ' missing' END;
END
$$;

CREATE OR REPLACE FUNCTION byok.attach_workspaces(workspace_table regclass, id_column name DEFAULT 'id',
                                       status_column name DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    status_type text;
    problem text;
BEGIN
    PERFORM byok._require_superuser('attach a workspace table');
    PERFORM byok._require(attach_workspaces.workspace_table, 'workspace_table');
    PERFORM byok._lock_app_table(attach_workspaces.workspace_table);
    PERFORM byok._uuid_column_type(attach_workspaces.workspace_table, attach_workspaces.id_column, 'id_column');
    problem := byok._inheritance_problem(attach_workspaces.workspace_table);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('table %s %s; pg_byok''s triggers would miss its rows', attach_workspaces.workspace_table, problem),
            HINT = 'Attach a plain table without inheritance children or parents (partitioned tables are not supported).';
    END IF;
    IF attach_workspaces.status_column IS NOT NULL THEN
        status_type := byok._column_type(attach_workspaces.workspace_table, attach_workspaces.status_column);
        IF status_type IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('table %s has no column %I', attach_workspaces.workspace_table,
                                 attach_workspaces.status_column),
                HINT = 'Pass the column holding the workspace''s status, or NULL for none.';
        END IF;
        IF NOT byok._status_type_ok(status_type) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('status column %I of %s is of type %s; pg_byok needs text or an enum',
                                 attach_workspaces.status_column, attach_workspaces.workspace_table, status_type),
                HINT = 'Point pg_byok at a text, varchar or enum status column.';
        END IF;
    END IF;
    PERFORM byok._create_workspace_triggers(attach_workspaces.workspace_table, attach_workspaces.id_column,
                                            attach_workspaces.status_column);
    INSERT INTO byok.workspace_source (workspace_table, id_column, status_column)
    VALUES (attach_workspaces.workspace_table, attach_workspaces.id_column, attach_workspaces.status_column)
    ON CONFLICT (workspace_table) DO UPDATE
        SET id_column = excluded.id_column, status_column = excluded.status_column;
END
$$;

CREATE OR REPLACE FUNCTION byok._drop_workspace_triggers(tbl regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_truncate ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_insert ON %s', tbl);
END
$$;

CREATE OR REPLACE FUNCTION byok.detach_workspaces(workspace_table regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require_superuser('detach a workspace table');
    PERFORM byok._require(detach_workspaces.workspace_table, 'workspace_table');
    -- A dropped table took its triggers with it; only its row is left.
    IF byok._lock_app_table(detach_workspaces.workspace_table) THEN
        PERFORM byok._drop_workspace_triggers(detach_workspaces.workspace_table);
    END IF;
    DELETE FROM byok.workspace_source WHERE workspace_table = detach_workspaces.workspace_table;
END
$$;

CREATE FUNCTION byok._inheritance_problem(tbl regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = tbl)
            THEN 'has inheritance children or partitions'
        WHEN EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = tbl)
            THEN 'inherits from, or is a partition of, another table'
    END
$$;

CREATE FUNCTION byok._inactive_rows_sql(id_col name, status_col name, old_rows boolean) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format(
        'SELECT lower(btrim(pg_catalog.format(''%%s'', n.%2$I))) AS status,
                array_agg(DISTINCT byok._as_uuid(n.%1$I::text)) AS ids
           FROM byok_new_rows n %3$s
          WHERE lower(btrim(pg_catalog.format(''%%s'', n.%2$I))) = ANY ($1) %4$s
          GROUP BY 1', id_col, status_col,
        CASE WHEN old_rows THEN format('JOIN byok_old_rows o ON o.%1$I = n.%1$I', id_col) ELSE '' END,
        CASE WHEN old_rows THEN format('AND pg_catalog.format(''%%s'', o.%1$I) IS DISTINCT FROM pg_catalog.format(''%%s'', n.%1$I)', status_col) ELSE '' END)
$$;

CREATE FUNCTION byok._on_workspace_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM byok._check_workspace_table(TG_RELID::regclass, TG_ARGV[0], TG_ARGV[1]);
    FOR r IN EXECUTE byok._inactive_rows_sql(TG_ARGV[0], TG_ARGV[1], false) USING byok._inactive_statuses() LOOP
        PERFORM byok._revoke(NULL, r.ids, format('workspace %s', r.status), 'workspace_' || r.status);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE FUNCTION byok._create_workspace_triggers(tbl regclass, id_col name, status_col name) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM byok._drop_workspace_triggers(tbl);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_delete AFTER DELETE ON %s
                    REFERENCING OLD TABLE AS byok_old_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)', tbl, id_col);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_truncate BEFORE TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)', tbl, id_col);
    -- Transition tables cannot be combined with UPDATE OF <column>, so the
    -- trigger fires on every UPDATE and compares old and new rows itself.
    EXECUTE format('CREATE TRIGGER byok_revoke_on_update AFTER UPDATE ON %s
                    REFERENCING OLD TABLE AS byok_old_rows NEW TABLE AS byok_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_update(%L, %L)',
                   tbl, id_col, coalesce(status_col, ''));
    -- Only a status can make an inserted row revoke anything.
    IF status_col IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER byok_revoke_on_insert AFTER INSERT ON %s
                        REFERENCING NEW TABLE AS byok_new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_insert(%L, %L)',
                       tbl, id_col, status_col);
    END IF;
END
$$;

CREATE FUNCTION byok.attachment_problems()
RETURNS TABLE (attached_as text, table_name text, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m byok.member_source;
    w byok.workspace_source;
    t record;
BEGIN
    FOR m IN SELECT * FROM byok.member_source LOOP
        attached_as := 'members';
        table_name := m.member_table::text;
        IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = m.member_table) THEN
            problem := 'dropped: only superuser and service_role are authorized';
            RETURN NEXT;
        ELSIF NOT byok._is_plain_table(m.member_table) THEN
            problem := 'no longer a plain table: authorization fails closed';
            RETURN NEXT;
        ELSIF NOT byok._id_type_ok(byok._column_type(m.member_table, m.workspace_column))
              OR NOT byok._id_type_ok(byok._column_type(m.member_table, m.user_column)) THEN
            problem := 'columns no longer uuid or text: authorization fails closed';
            RETURN NEXT;
        END IF;
    END LOOP;
    FOR w IN SELECT * FROM byok.workspace_source ORDER BY workspace_table LOOP
        attached_as := 'workspaces';
        table_name := w.workspace_table::text;
        IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = w.workspace_table) THEN
            problem := 'dropped: its workspaces'' keys were not revoked (run byok.detach_workspaces)';
            RETURN NEXT;
            CONTINUE;
        END IF;
        problem := CASE
            WHEN NOT byok._is_plain_table(w.workspace_table) THEN 'no longer a plain table'
            WHEN byok._inheritance_problem(w.workspace_table) IS NOT NULL
                THEN byok._inheritance_problem(w.workspace_table)
            WHEN NOT byok._id_type_ok(byok._column_type(w.workspace_table, w.id_column))
              OR (w.status_column IS NOT NULL
                  AND NOT byok._status_type_ok(byok._column_type(w.workspace_table, w.status_column)))
                THEN 'columns no longer what attach_workspaces checked'
        END;
        IF problem IS NOT NULL THEN
            problem := problem || ': its statements and add_key fail closed';
            RETURN NEXT;
        END IF;
        FOR t IN
            SELECT e.name, e.fn, tg.tgenabled
              FROM (VALUES ('byok_revoke_on_delete', 'byok._on_workspace_removed()'::regprocedure),
                           ('byok_revoke_on_truncate', 'byok._on_workspace_removed()'::regprocedure),
                           ('byok_revoke_on_update', 'byok._on_workspace_update()'::regprocedure),
                           ('byok_revoke_on_insert', 'byok._on_workspace_insert()'::regprocedure)) AS e(name, fn)
              LEFT JOIN pg_trigger tg ON tg.tgrelid = w.workspace_table AND tg.tgname = e.name
             WHERE e.name <> 'byok_revoke_on_insert' OR w.status_column IS NOT NULL
        LOOP
            problem := CASE
                WHEN t.tgenabled IS NULL THEN format('trigger %s is missing', t.name)
                WHEN t.tgenabled = 'D' THEN format('trigger %s is disabled', t.name)
                WHEN t.tgenabled = 'R' THEN format('trigger %s fires only in replica sessions', t.name)
                WHEN NOT EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = w.workspace_table
                                    AND tg.tgname = t.name AND tg.tgfoid = t.fn)
                    THEN format('trigger %s no longer calls %s', t.name, t.fn)
            END;
            IF problem IS NOT NULL THEN
                problem := problem || ' (run byok.attach_workspaces again)';
                RETURN NEXT;
            END IF;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION byok.attachment_problems() IS
    'Attached tables that no longer revoke keys or authorize as configured (dropped, changed, triggers missing or disabled); empty when healthy';

DROP FUNCTION byok._membership_sql(byok.member_source);
DROP FUNCTION byok._match_uuid(name, text, text);

REVOKE ALL ON FUNCTION byok._lock_app_table(oid), byok._is_member(oid, text, text, uuid, uuid),
    byok._workspace_row_state(oid, text, text, uuid), byok._workspace_ids(oid, text),
    byok._inheritance_problem(regclass), byok._inactive_rows_sql(name, name, boolean),
    byok._on_workspace_insert(), byok._create_workspace_triggers(regclass, name, name),
    byok.attachment_problems()
  FROM PUBLIC;

-- Tables attached under 0.1.0: their triggers again, INSERT included; a
-- table that no longer qualifies (partitioned, inherited) now fails closed,
-- so say so now.
DO $tenancy$
DECLARE
    w byok.workspace_source;
    p record;
BEGIN
    FOR w IN SELECT * FROM byok.workspace_source LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = w.workspace_table) THEN
            PERFORM byok._create_workspace_triggers(w.workspace_table, w.id_column, w.status_column);
        END IF;
    END LOOP;
    FOR p IN SELECT * FROM byok.attachment_problems() LOOP
        RAISE WARNING 'pg_byok: attached % table %: %', p.attached_as, p.table_name, p.problem;
    END LOOP;
END
$tenancy$;

-- supabase: admin role, dumps, audit for members
--
-- Configuration by byok_admin instead of a superuser (Supabase's postgres
-- is none), pg_byok's tables out of pg_dump's configuration set (a
-- non-superuser's pg_dump would need the ciphertext column; the superuser's
-- byok.export_archive() carries the rows instead), and SELECT on the audit
-- trail for authenticated (RLS limits it to the caller's workspaces).
-- Runs after the tenancy section: the attach/detach functions below are
-- tenancy.sql's final text, calling byok._require_admin.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'byok_admin') THEN
        CREATE ROLE byok_admin NOLOGIN;
    END IF;
END
$roles$;
COMMENT ON ROLE byok_admin IS 'pg_byok: may configure pg_byok (attach, grants) and read its health; never a key';

-- 0.1.0 registered the tables and sequences with pg_extension_config_dump;
-- there is no function to undo that, so the catalog entry is cleared here.
UPDATE pg_catalog.pg_extension SET extconfig = NULL, extcondition = NULL WHERE extname = 'pg_byok';

-- 42501 unless the caller is a superuser or a member of byok_admin.
-- Membership, not inherited privilege: Supabase's postgres is INHERIT, but a
-- NOINHERIT member that SET ROLEs is still the member it is.
CREATE FUNCTION byok._require_admin(what text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller text := byok._caller();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = caller AND rolsuper)
       AND NOT pg_has_role(caller, 'byok_admin', 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('only a member of byok_admin (or a superuser) may %s', what),
            HINT = 'Run it in a migration as the database owner, after GRANT byok_admin TO <that role> '
                   '(byok.grant_supabase_roles() grants it to postgres on Supabase).';
    END IF;
END
$$;

-- A byok_admin member configures pg_byok with the extension owner's power,
-- so it may point pg_byok only at tables it could use itself: SELECT for a
-- membership table (else authorize() would answer questions about rows the
-- caller cannot read), TRIGGER for a workspace table (attach creates
-- triggers on it). 42501 otherwise.
CREATE FUNCTION byok._require_table_privilege(tbl regclass, privilege text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller text := byok._caller();
BEGIN
    IF tbl IS NOT NULL AND NOT has_table_privilege(caller::name, tbl::oid, privilege) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('%s has no %s privilege on %s', caller, privilege, tbl),
            HINT = format('Attach a table %s may %s (its own app tables), or GRANT %s on it first.',
                          caller, lower(privilege), privilege);
    END IF;
END
$$;

-- One INSERT of a table's rows, as a SQL statement: the rows as a JSON
-- literal (quote_literal: safe for any label or detail text), read back
-- with the table's own row type so every column converts with its input
-- function (bytea from '\x…', regclass from its name).
-- Configuration rows the restored database may already hold (its own
-- migration ran attach_*) are kept as they are: ON CONFLICT DO NOTHING.
CREATE FUNCTION byok._archive_insert(tbl regclass, overriding boolean, keep_existing boolean) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rows_json text;
BEGIN
    EXECUTE format('SELECT json_agg(t)::text FROM %s t', tbl) INTO rows_json;
    IF rows_json IS NULL THEN
        RETURN format('-- %s: no rows', tbl);
    END IF;
    RETURN format('INSERT INTO %1$s %2$sSELECT * FROM pg_catalog.json_populate_recordset(NULL::%1$s, %3$L)%4$s;',
                  tbl, CASE WHEN overriding THEN 'OVERRIDING SYSTEM VALUE ' ELSE '' END, rows_json,
                  CASE WHEN keep_existing THEN ' ON CONFLICT DO NOTHING' ELSE '' END);
END
$$;

CREATE FUNCTION byok.export_archive() RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper) THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'only a superuser may export pg_byok''s archive',
            HINT = 'Run it as the cluster''s superuser (supabase_admin on Supabase); it holds the sealed keys.';
    END IF;
    -- One snapshot for every table (the caller's transaction; REPEATABLE
    -- READ makes a multi-statement export consistent too).
    RETURN (SELECT concat_ws(E'\n',
        '-- pg_byok archive: sealed keys, jobs, audit trail and configuration.',
        '-- Restore as a superuser into a database where CREATE EXTENSION pg_byok has run and',
        '-- the app''s tables exist; the keys open with the keyring they were sealed with.',
        'BEGIN;',
        'SET LOCAL search_path = pg_catalog, pg_temp;',
        byok._archive_insert('byok.member_source', false, true),
        byok._archive_insert('byok.workspace_source', false, true),
        byok._archive_insert('byok.keys', false, false),
        byok._archive_insert('byok.jobs', true, false),
        byok._archive_insert('byok.audit_log', true, false),
        byok._archive_insert('byok.vendor_health', false, true),
        format('SELECT pg_catalog.setval(%L, %s, %L);', 'byok.jobs_id_seq', s.last_value, s.is_called),
        format('SELECT pg_catalog.setval(%L, %s, %L);', 'byok.audit_log_id_seq', a.last_value, a.is_called),
        'COMMIT;')
      FROM byok.jobs_id_seq s, byok.audit_log_id_seq a);
END
$$;
COMMENT ON FUNCTION byok.export_archive() IS
    'Superuser only: a SQL script that restores pg_byok''s rows (sealed keys included); keep it with the keyring escrow';

REVOKE ALL ON FUNCTION byok._require_admin(text), byok._require_table_privilege(regclass, text),
    byok._archive_insert(regclass, boolean, boolean), byok.export_archive() FROM PUBLIC;

CREATE OR REPLACE FUNCTION byok.attach_members(member_table regclass, workspace_column name DEFAULT 'workspace_id',
                                    user_column name DEFAULT 'user_id')
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require_admin('configure workspace membership');
    PERFORM byok._require(attach_members.member_table, 'member_table');
    PERFORM byok._require_table_privilege(attach_members.member_table, 'SELECT');
    PERFORM byok._uuid_column_type(attach_members.member_table, attach_members.workspace_column, 'workspace id');
    PERFORM byok._uuid_column_type(attach_members.member_table, attach_members.user_column, 'user id');
    INSERT INTO byok.member_source (member_table, workspace_column, user_column)
    VALUES (attach_members.member_table, attach_members.workspace_column, attach_members.user_column)
    ON CONFLICT (singleton) DO UPDATE
        SET member_table = excluded.member_table, workspace_column = excluded.workspace_column,
            user_column = excluded.user_column;
END
$$;
COMMENT ON FUNCTION byok.attach_members(regclass, name, name) IS
    'Authorize callers whose JWT subject is a member of the workspace in this table (replaces any earlier rule)';

CREATE OR REPLACE FUNCTION byok.detach_members() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM byok._require_admin('configure workspace membership');
    DELETE FROM byok.member_source;
END
$$;
COMMENT ON FUNCTION byok.detach_members() IS 'Forget the membership rule: only superuser/service_role are authorized';

CREATE OR REPLACE FUNCTION byok.attach_workspaces(workspace_table regclass, id_column name DEFAULT 'id',
                                       status_column name DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    status_type text;
    problem text;
BEGIN
    PERFORM byok._require_admin('attach a workspace table');
    PERFORM byok._require(attach_workspaces.workspace_table, 'workspace_table');
    PERFORM byok._require_table_privilege(attach_workspaces.workspace_table, 'TRIGGER');
    PERFORM byok._lock_app_table(attach_workspaces.workspace_table);
    PERFORM byok._uuid_column_type(attach_workspaces.workspace_table, attach_workspaces.id_column, 'id_column');
    problem := byok._inheritance_problem(attach_workspaces.workspace_table);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('table %s %s; pg_byok''s triggers would miss its rows', attach_workspaces.workspace_table, problem),
            HINT = 'Attach a plain table without inheritance children or parents (partitioned tables are not supported).';
    END IF;
    IF attach_workspaces.status_column IS NOT NULL THEN
        status_type := byok._column_type(attach_workspaces.workspace_table, attach_workspaces.status_column);
        IF status_type IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('table %s has no column %I', attach_workspaces.workspace_table,
                                 attach_workspaces.status_column),
                HINT = 'Pass the column holding the workspace''s status, or NULL for none.';
        END IF;
        IF NOT byok._status_type_ok(status_type) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('status column %I of %s is of type %s; pg_byok needs text or an enum',
                                 attach_workspaces.status_column, attach_workspaces.workspace_table, status_type),
                HINT = 'Point pg_byok at a text, varchar or enum status column.';
        END IF;
    END IF;
    PERFORM byok._create_workspace_triggers(attach_workspaces.workspace_table, attach_workspaces.id_column,
                                            attach_workspaces.status_column);
    INSERT INTO byok.workspace_source (workspace_table, id_column, status_column)
    VALUES (attach_workspaces.workspace_table, attach_workspaces.id_column, attach_workspaces.status_column)
    ON CONFLICT (workspace_table) DO UPDATE
        SET id_column = excluded.id_column, status_column = excluded.status_column;
END
$$;
COMMENT ON FUNCTION byok.attach_workspaces(regclass, name, name) IS
    'Revoke a workspace''s keys when its row is deleted, its id changes or its status becomes inactive';


CREATE OR REPLACE FUNCTION byok.detach_workspaces(workspace_table regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require_admin('detach a workspace table');
    PERFORM byok._require(detach_workspaces.workspace_table, 'workspace_table');
    PERFORM byok._require_table_privilege(detach_workspaces.workspace_table, 'TRIGGER');
    -- A dropped table took its triggers with it; only its row is left.
    IF byok._lock_app_table(detach_workspaces.workspace_table) THEN
        PERFORM byok._drop_workspace_triggers(detach_workspaces.workspace_table);
    END IF;
    DELETE FROM byok.workspace_source WHERE workspace_table = detach_workspaces.workspace_table;
END
$$;
COMMENT ON FUNCTION byok.detach_workspaces(regclass) IS 'Remove the revocation triggers from a workspace table';

DROP FUNCTION byok._require_superuser(text);

-- The grants themselves, unchecked: CREATE EXTENSION calls this directly,
-- since under supautils it runs as the superuser on postgres's behalf (the
-- caller check would see postgres, not yet a member of byok_admin).
CREATE FUNCTION byok._grant_supabase_roles() RETURNS text[]
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    granted text[] := '{}';
    member_functions text := 'byok.add_key(uuid, text, text, text), byok.list_keys(uuid),
        byok.revoke_key(uuid, text), byok.revalidate_key(uuid), byok.mask(text), byok.redact(text),
        byok.authorize(uuid)';
    key_columns text := '(id, workspace_id, vendor, label, masked, status, status_detail,
        created_at, validated_at, revoked_at)';
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        -- anon reaches nothing, even if defaults elsewhere granted it something.
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA byok FROM anon;
        REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM anon;
        REVOKE ALL ON SCHEMA byok FROM anon;
        granted := granted || 'anon (nothing)'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA byok FROM authenticated;
        REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM authenticated;
        GRANT USAGE ON SCHEMA byok TO authenticated;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO authenticated', member_functions);
        -- The 'key activity' of a settings page: RLS (authorize) limits it
        -- to the caller's own workspaces.
        GRANT SELECT ON byok.audit_log TO authenticated;
        granted := granted || 'authenticated'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA byok FROM service_role;
        REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM service_role;
        GRANT USAGE ON SCHEMA byok TO service_role;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s, byok.revoke_workspace(uuid, text) TO service_role',
                       member_functions);
        EXECUTE format('GRANT SELECT %s ON byok.keys TO service_role', key_columns);
        GRANT SELECT ON byok.audit_log, byok.vendor_status TO service_role;
        -- Supabase creates service_role NOINHERIT: membership alone would not
        -- carry byok_consumer's EXECUTE, so use_key is granted directly too.
        GRANT byok_consumer TO service_role;
        GRANT EXECUTE ON FUNCTION byok.use_key(uuid, text) TO service_role;
        granted := granted || 'service_role'::text;
    END IF;
    -- Supabase's layout: postgres is the database owner but no superuser,
    -- and runs the developer's migrations. It configures pg_byok through
    -- byok_admin (which reads no key).
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'postgres' AND NOT rolsuper)
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')) THEN
        GRANT byok_admin TO postgres;
        granted := granted || 'postgres (byok_admin)'::text;
    END IF;
    RETURN granted;
END
$$;

CREATE OR REPLACE FUNCTION byok.grant_supabase_roles() RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM byok._require_admin('grant pg_byok to Supabase''s roles');
    RETURN byok._grant_supabase_roles();
END
$$;
REVOKE ALL ON FUNCTION byok._grant_supabase_roles() FROM PUBLIC;

-- byok_admin: configuration and health, never a key. The trigger
-- functions are granted so that a dump restored by the database owner can
-- re-create the workspace triggers (a trigger function cannot be called
-- directly). SELECT on byok.keys leaves out the ciphertext column.
-- A fresh install grants the schema to byok_admin before Supabase's roles
-- (_grant_supabase_roles, below, grants them again): keep that order, so
-- the upgraded schema's privileges read exactly as a fresh install's.
DO $reorder$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE USAGE ON SCHEMA byok FROM authenticated;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        REVOKE USAGE ON SCHEMA byok FROM service_role;
    END IF;
END
$reorder$;
GRANT USAGE ON SCHEMA byok TO byok_admin;
GRANT EXECUTE ON FUNCTION
    byok.attach_members(regclass, name, name),
    byok.detach_members(),
    byok.attach_workspaces(regclass, name, name),
    byok.detach_workspaces(regclass),
    byok.grant_supabase_roles(),
    byok.master_key_status(),
    byok.queue_depth(),
    byok._on_workspace_removed(),
    byok._on_workspace_update(),
    byok._on_workspace_insert()
  TO byok_admin;
GRANT SELECT ON byok.vendor_status, byok.audit_log, byok.member_source, byok.workspace_source TO byok_admin;
GRANT SELECT (id, workspace_id, vendor, label, masked, status, status_detail, created_at, validated_at,
              revoked_at, revoked_cause) ON byok.keys TO byok_admin;

SELECT byok._grant_supabase_roles();

-- lifecycle: revalidation, failure reports, key health, events
-- (sql/health.sql, and the columns, constraint and functions it changes in
-- bootstrap.sql, internals.sql, api.sql, queue.sql and grants.sql; each
-- function here is the whole of its fresh-install text)

-- Key health columns, in bootstrap.sql's order. A key validated under 0.1.0
-- counts as checked when it was validated, so the schedule starts there.
ALTER TABLE byok.keys
    ADD COLUMN checked_at    timestamptz,
    ADD COLUMN check_outcome text CHECK (check_outcome IN ('valid', 'invalid', 'unverified')),
    ADD COLUMN last_used_at  timestamptz,
    ADD COLUMN vendor_account text CHECK (char_length(vendor_account) <= 200);
UPDATE byok.keys SET checked_at = validated_at, check_outcome = 'valid' WHERE validated_at IS NOT NULL;
CREATE INDEX keys_active_by_check ON byok.keys ((coalesce(checked_at, validated_at, created_at)))
    WHERE status = 'active';

-- The audit trail records failure reports; same constraint name as a fresh install.
ALTER TABLE byok.audit_log
    DROP CONSTRAINT audit_log_action_check,
    ADD CONSTRAINT audit_log_action_check CHECK (action IN ('add', 'validate', 'use', 'revoke', 'rotate', 'revalidate',
                                   'report_failure'));

-- key_info shows the vendor account; _info builds the longer row.
ALTER TYPE byok.key_info ADD ATTRIBUTE vendor_account text;
CREATE OR REPLACE FUNCTION byok._info(k byok.keys) RETURNS byok.key_info
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ROW(k.id, k.workspace_id, k.vendor, k.label, k.masked, k.status, k.status_detail,
               k.created_at, k.validated_at, k.revoked_at, k.vendor_account)::byok.key_info
$$;

-- use_key records last_used_at.
CREATE OR REPLACE FUNCTION byok.use_key(workspace_id uuid, vendor text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v text;
    k byok.keys;
    plain text;
BEGIN
    PERFORM byok._require(use_key.workspace_id, 'workspace_id');
    PERFORM byok._require(use_key.vendor, 'vendor');
    IF NOT byok._caller_has_role('byok_consumer') THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'permission denied: byok.use_key is for the byok_consumer role',
            HINT = 'Call it from your backend as a role granted byok_consumer (service_role on Supabase).';
    END IF;
    v := byok._vendor(use_key.vendor);
    SELECT * INTO k FROM byok.keys
     WHERE workspace_id = use_key.workspace_id AND vendor = v AND status = 'active';
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM byok.keys WHERE workspace_id = use_key.workspace_id
                      AND vendor = v AND status = 'pending') THEN
            RAISE EXCEPTION USING ERRCODE = 'P0002',
                MESSAGE = format('no active %s key for workspace %s', v, use_key.workspace_id),
                HINT = 'A key is pending validation; retry once the sidecar has validated it.';
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = format('no active %s key for workspace %s', v, use_key.workspace_id),
            HINT = 'Ask the workspace to add a key with byok.add_key.';
    END IF;
    plain := byok._open(k.id, k.workspace_id, k.vendor, k.ciphertext);
    -- last_used_at (byok.key_health's idle keys) to the minute: one write a
    -- minute per key, not one per call, so a busy key's callers meet its
    -- row lock at most once a minute.
    IF k.last_used_at IS NULL OR k.last_used_at < clock_timestamp() - interval '1 minute' THEN
        UPDATE byok.keys SET last_used_at = clock_timestamp()
         WHERE id = k.id AND (last_used_at IS NULL OR last_used_at < clock_timestamp() - interval '1 minute');
    END IF;
    PERFORM byok._audit('use', k.id, k.workspace_id, k.vendor, 'ok', NULL);
    RETURN plain;
END
$$;

-- finish_job takes vendor_account (last, defaulted: an 0.1.0 sidecar's
-- six-argument call still resolves) and records checked_at/check_outcome.
-- A seventh argument is a new signature, so the old function goes.
DROP FUNCTION byok.finish_job(bigint, uuid, text, text, integer, integer);
CREATE FUNCTION byok.finish_job(job_id bigint, lease_token uuid, outcome text, detail text DEFAULT NULL,
                                http_status integer DEFAULT NULL, retry_after_seconds integer DEFAULT NULL,
                                vendor_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    verdict text := lower(btrim(finish_job.outcome));
    note text;
    account text := byok._clean_text(finish_job.vendor_account, 'vendor_account', 200);
    swap_note text;
    j byok.jobs;
    k byok.keys;
    current_active byok.keys;
BEGIN
    PERFORM byok._require(finish_job.job_id, 'job_id');
    PERFORM byok._require(finish_job.lease_token, 'lease_token');
    PERFORM byok._require(finish_job.outcome, 'outcome');
    IF verdict NOT IN ('valid', 'invalid', 'retry', 'unverified') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown outcome %L', left(byok.redact(finish_job.outcome), 40)),
            HINT = 'outcome is one of valid, invalid, retry, unverified.';
    END IF;
    IF finish_job.http_status IS NOT NULL AND finish_job.http_status NOT BETWEEN 100 AND 599 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'http_status must be between 100 and 599',
            HINT = 'Pass the vendor''s HTTP status, or NULL when there was no answer.';
    END IF;
    IF finish_job.retry_after_seconds IS NOT NULL
       AND finish_job.retry_after_seconds NOT BETWEEN 0 AND 86400 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'retry_after_seconds must be between 0 and 86400',
            HINT = 'Pass the vendor''s Retry-After in seconds, or NULL.';
    END IF;
    -- Redact before cutting: a key cut in half would no longer look like one.
    -- (The 64 kB bound only stops a runaway body; it is far past the cut.)
    note := left(byok.redact(nullif(btrim(left(finish_job.detail, 65536)), '')), 1000);

    SELECT * INTO j FROM byok.jobs WHERE id = finish_job.job_id FOR UPDATE;
    IF NOT FOUND OR j.lease_token IS DISTINCT FROM finish_job.lease_token THEN
        RAISE NOTICE 'pg_byok: lease token for job % is stale; nothing changed', finish_job.job_id
            USING HINT = 'The lease ran out and the job was claimed again or finished elsewhere.';
        RETURN 'stale';
    END IF;
    SELECT * INTO k FROM byok.keys WHERE id = j.key_id FOR UPDATE;

    IF verdict = 'retry' AND j.attempts >= byok._max_attempts() THEN
        verdict := 'unverified';
        note := left(format('the vendor could not be reached after %s attempts%s', j.attempts,
                            coalesce(': ' || note, '')), 1000);
    END IF;

    IF verdict = 'retry' THEN
        UPDATE byok.jobs
           SET run_after = clock_timestamp() + make_interval(
                   secs => byok._retry_delay(j.attempts, finish_job.retry_after_seconds)),
               lease_token = NULL, leased_by = NULL, last_error = note
         WHERE id = j.id;
        RETURN k.status;
    END IF;

    DELETE FROM byok.jobs WHERE id = j.id;

    IF verdict = 'valid' THEN
        -- Two keys of one (workspace, vendor) validated at the same moment
        -- must not both find "no active key": serialise their activation.
        PERFORM pg_advisory_xact_lock(hashtextextended('byok.activate:' || k.workspace_id || ':' || k.vendor, 0));
        SELECT * INTO current_active FROM byok.keys
         WHERE workspace_id = k.workspace_id AND vendor = k.vendor AND status = 'active' AND id <> k.id
         FOR UPDATE;
        IF FOUND AND current_active.created_at > k.created_at THEN
            -- A newer key is already serving: this older one is superseded at once.
            PERFORM byok._revoke(ARRAY[k.id], NULL,
                format('rotated: superseded by newer key %s', current_active.masked), 'rotated');
        ELSE
            IF FOUND THEN
                -- A replacement from another vendor account is usually a
                -- paste from the wrong console: flagged, never refused.
                IF account IS NOT NULL AND current_active.vendor_account IS NOT NULL
                   AND account <> current_active.vendor_account THEN
                    swap_note := format('vendor account changed: %s replaces key %s of account %s',
                                        account, current_active.masked, current_active.vendor_account);
                END IF;
                PERFORM byok._revoke(ARRAY[current_active.id], NULL,
                    format('rotated: superseded by key %s', k.masked), 'rotated');
                PERFORM byok._audit('rotate', k.id, k.workspace_id, k.vendor,
                    CASE WHEN swap_note IS NULL THEN 'active' ELSE 'account_changed' END,
                    concat_ws('; ', format('replaces key %s', current_active.masked), swap_note));
            END IF;
            UPDATE byok.keys SET status = 'active', validated_at = clock_timestamp(),
                   status_detail = left(concat_ws('; ', swap_note, note), 1000),
                   vendor_account = coalesce(account, vendor_account)
             WHERE id = k.id;
        END IF;
    ELSIF verdict = 'invalid' THEN
        UPDATE byok.keys SET status = 'invalid', ciphertext = NULL,
               status_detail = coalesce(note, 'the vendor rejected the key')
         WHERE id = k.id;
    ELSIF k.status <> 'active' THEN  -- unverified; an active key being re-checked keeps serving
        UPDATE byok.keys SET status = 'unverified', status_detail = note WHERE id = k.id;
    END IF;

    -- Key health: when this check ended and how (byok.key_health, and the
    -- schedule of byok.enqueue_due_revalidations).
    UPDATE byok.keys SET checked_at = clock_timestamp(), check_outcome = verdict
     WHERE id = k.id
    RETURNING * INTO k;
    PERFORM byok._audit('validate', k.id, k.workspace_id, k.vendor, verdict,
        concat_ws(' ', 'http ' || finish_job.http_status, note,
                  '(account ' || account || ')'));
    RETURN k.status;
END
$$;
COMMENT ON FUNCTION byok.finish_job(bigint, uuid, text, text, integer, integer, text) IS
    'Record a validation verdict under a lease token; returns the key''s new status, or ''stale''';
REVOKE ALL ON FUNCTION byok.finish_job(bigint, uuid, text, text, integer, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION byok.finish_job(bigint, uuid, text, text, integer, integer, text) TO byok_worker;

-- The settings' readers (Rust, declared as pgrx declares them).
CREATE FUNCTION byok._revalidate_interval() RETURNS integer
STRICT STABLE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'revalidate_interval_wrapper';
CREATE FUNCTION byok._idle_key_days() RETURNS integer
STRICT STABLE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'idle_key_days_wrapper';

-- sql/health.sql as a fresh install runs it.
-- Queue a validation of a live key now, keeping a queued job's attempt count
-- and leaving a job under a live lease to its worker (as revalidate_key).
CREATE FUNCTION byok._queue_check(key_id uuid) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO byok.jobs (key_id) VALUES (_queue_check.key_id)
    ON CONFLICT (key_id) DO UPDATE
        SET run_after = clock_timestamp(), lease_token = NULL, leased_by = NULL
        WHERE byok.jobs.lease_token IS NULL OR byok.jobs.run_after <= clock_timestamp();
    PERFORM pg_notify('byok_jobs', '');
END
$$;

CREATE FUNCTION byok.report_key_failure(workspace_id uuid, vendor text, http_status integer,
                                        detail text DEFAULT NULL)
RETURNS byok.key_info
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v text;
    k byok.keys;
    note text;
BEGIN
    PERFORM byok._require(report_key_failure.workspace_id, 'workspace_id');
    PERFORM byok._require(report_key_failure.vendor, 'vendor');
    PERFORM byok._require(report_key_failure.http_status, 'http_status');
    IF NOT byok._caller_has_role('byok_consumer') THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'permission denied: byok.report_key_failure is for the byok_consumer role',
            HINT = 'Report from the backend that called use_key, as a role granted byok_consumer.';
    END IF;
    v := byok._vendor(report_key_failure.vendor);
    IF report_key_failure.http_status NOT IN (401, 403) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('http_status %s is not a key failure', report_key_failure.http_status),
            HINT = 'Report only 401 and 403 answers; a 429 or 5xx is the vendor''s load or outage, not the key.';
    END IF;
    -- Redact before cutting (a key cut in half no longer looks like one);
    -- the 64 kB bound only stops a runaway body.
    note := left(byok.redact(nullif(btrim(left(report_key_failure.detail, 65536)), '')), 500);
    SELECT * INTO k FROM byok.keys
     WHERE workspace_id = report_key_failure.workspace_id AND vendor = v AND status = 'active'
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = format('no active %s key for workspace %s', v, report_key_failure.workspace_id),
            HINT = 'The key may already be invalid or revoked: check byok.list_keys, or ask the workspace to add a key.';
    END IF;
    PERFORM byok._audit('report_failure', k.id, k.workspace_id, k.vendor,
        'http ' || report_key_failure.http_status, note);
    PERFORM byok._queue_check(k.id);
    RETURN byok._info(k);
END
$$;
COMMENT ON FUNCTION byok.report_key_failure(uuid, text, integer, text) IS
    'Report a vendor''s 401/403 for a workspace''s active key: audited, the key re-checked at once (never demoted by the report)';

-- Key status events. Any role that can connect may LISTEN on any channel,
-- so the payload holds ids and statuses only: no mask, no detail, no label.
CREATE FUNCTION byok._key_event() RETURNS trigger
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('byok_key_events', json_build_object(
        'key_id', NEW.id, 'workspace_id', NEW.workspace_id, 'vendor', NEW.vendor,
        'status', NEW.status, 'previous_status', OLD.status)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER keys_status_events AFTER UPDATE OF status ON byok.keys
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('active', 'invalid', 'unverified', 'revoked'))
    EXECUTE FUNCTION byok._key_event();

-- Scheduled revalidation: the sidecar calls this on a timer. Active keys
-- whose last check (or activation) is older than byok.revalidate_interval
-- get a job, oldest first; a key with a job already queued is left alone.
CREATE FUNCTION byok.enqueue_due_revalidations(max_keys integer DEFAULT 100) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    every integer := byok._revalidate_interval();
    n integer;
BEGIN
    IF enqueue_due_revalidations.max_keys IS NULL
       OR enqueue_due_revalidations.max_keys NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'max_keys must be between 1 and 10000',
            HINT = 'Queue a batch per timer tick; the rest are queued on the next.';
    END IF;
    IF every = 0 THEN
        RETURN 0;
    END IF;
    WITH due AS (
        SELECT k.id, k.workspace_id, k.vendor FROM byok.keys k
         WHERE k.status = 'active'
           AND coalesce(k.checked_at, k.validated_at, k.created_at)
               <= clock_timestamp() - make_interval(secs => every)
           AND NOT EXISTS (SELECT 1 FROM byok.jobs j WHERE j.key_id = k.id)
         ORDER BY coalesce(k.checked_at, k.validated_at, k.created_at), k.id
         LIMIT enqueue_due_revalidations.max_keys
           FOR UPDATE OF k SKIP LOCKED
    ), queued AS (
        INSERT INTO byok.jobs (key_id) SELECT d.id FROM due d
        ON CONFLICT (key_id) DO NOTHING
        RETURNING byok.jobs.key_id
    ), audited AS (
        INSERT INTO byok.audit_log (actor_role, actor_sub, action, key_id, workspace_id, vendor, outcome, detail)
        SELECT byok._caller(), byok._jwt_sub(), 'revalidate', d.id, d.workspace_id, d.vendor, 'scheduled',
               format('last checked more than %s ago', make_interval(secs => every))
          FROM due d JOIN queued q ON q.key_id = d.id
    )
    SELECT count(*) INTO n FROM queued;
    IF n > 0 THEN
        PERFORM pg_notify('byok_jobs', '');
    END IF;
    RETURN n;
END
$$;
COMMENT ON FUNCTION byok.enqueue_due_revalidations(integer) IS
    'Queue re-checks of active keys last checked longer ago than byok.revalidate_interval; byok_worker (the sidecar''s timer)';

CREATE FUNCTION byok.key_health(workspace_id uuid)
RETURNS TABLE(key_id uuid, vendor text, masked text, status text, vendor_account text,
              last_checked_at timestamptz, last_outcome text, next_check_due timestamptz,
              last_used_at timestamptz, idle boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    every integer := byok._revalidate_interval();
    idle_after interval := make_interval(days => byok._idle_key_days());
BEGIN
    PERFORM byok._require(key_health.workspace_id, 'workspace_id');
    IF NOT byok.authorize(key_health.workspace_id) THEN
        PERFORM byok._deny_workspace(key_health.workspace_id);
    END IF;
    -- A queued job is the next check; otherwise an active key is due one
    -- interval after its last check (never, with the schedule off).
    RETURN QUERY
        SELECT k.id, k.vendor, k.masked, k.status, k.vendor_account,
               k.checked_at, k.check_outcome,
               coalesce(j.run_after,
                        CASE WHEN k.status = 'active' AND every > 0
                             THEN coalesce(k.checked_at, k.validated_at, k.created_at)
                                  + make_interval(secs => every) END),
               k.last_used_at,
               k.status = 'active'
                   AND coalesce(k.last_used_at, k.validated_at, k.created_at) < clock_timestamp() - idle_after
          FROM byok.keys k
          LEFT JOIN byok.jobs j ON j.key_id = k.id
         WHERE k.workspace_id = key_health.workspace_id
           AND k.status IN ('pending', 'active', 'unverified')
         ORDER BY k.vendor, k.created_at DESC, k.id;
END
$$;
COMMENT ON FUNCTION byok.key_health(uuid) IS
    'A workspace''s live keys: last check and its outcome, next check due, last use, idle';

GRANT EXECUTE ON FUNCTION byok.report_key_failure(uuid, text, integer, text) TO byok_consumer;
GRANT EXECUTE ON FUNCTION byok.enqueue_due_revalidations(integer) TO byok_worker;

-- Nothing new is executable by PUBLIC (grants.sql's loop, for a fresh install).
REVOKE ALL ON FUNCTION byok._revalidate_interval(), byok._idle_key_days(), byok._queue_check(uuid),
    byok.report_key_failure(uuid, text, integer, text), byok._key_event(),
    byok.enqueue_due_revalidations(integer), byok.key_health(uuid) FROM PUBLIC;

-- _grant_supabase_roles grants key_health to members and report_key_failure
-- to service_role; run again so existing Supabase roles get them.
CREATE OR REPLACE FUNCTION byok._grant_supabase_roles() RETURNS text[]
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    granted text[] := '{}';
    member_functions text := 'byok.add_key(uuid, text, text, text), byok.list_keys(uuid),
        byok.revoke_key(uuid, text), byok.revalidate_key(uuid), byok.mask(text), byok.redact(text),
        byok.authorize(uuid), byok.key_health(uuid)';
    key_columns text := '(id, workspace_id, vendor, label, masked, status, status_detail,
        created_at, validated_at, revoked_at)';
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        -- anon reaches nothing, even if defaults elsewhere granted it something.
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA byok FROM anon;
        REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM anon;
        REVOKE ALL ON SCHEMA byok FROM anon;
        granted := granted || 'anon (nothing)'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA byok FROM authenticated;
        REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM authenticated;
        GRANT USAGE ON SCHEMA byok TO authenticated;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO authenticated', member_functions);
        -- The 'key activity' of a settings page: RLS (authorize) limits it
        -- to the caller's own workspaces.
        GRANT SELECT ON byok.audit_log TO authenticated;
        granted := granted || 'authenticated'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA byok FROM service_role;
        REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM service_role;
        GRANT USAGE ON SCHEMA byok TO service_role;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s, byok.revoke_workspace(uuid, text) TO service_role',
                       member_functions);
        EXECUTE format('GRANT SELECT %s ON byok.keys TO service_role', key_columns);
        GRANT SELECT ON byok.audit_log, byok.vendor_status TO service_role;
        -- Supabase creates service_role NOINHERIT: membership alone would not
        -- carry byok_consumer's EXECUTE, so use_key is granted directly too.
        GRANT byok_consumer TO service_role;
        GRANT EXECUTE ON FUNCTION byok.use_key(uuid, text),
            byok.report_key_failure(uuid, text, integer, text) TO service_role;
        granted := granted || 'service_role'::text;
    END IF;
    -- Supabase's layout: postgres is the database owner but no superuser,
    -- and runs the developer's migrations. It configures pg_byok through
    -- byok_admin (which reads no key).
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'postgres' AND NOT rolsuper)
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')) THEN
        GRANT byok_admin TO postgres;
        granted := granted || 'postgres (byok_admin)'::text;
    END IF;
    RETURN granted;
END
$$;
SELECT byok._grant_supabase_roles();

-- end of section: lifecycle: revalidation, failure reports, key health, events

-- byok_admin monitors the attached tables (docs/API.md: attachment_problems).
GRANT EXECUTE ON FUNCTION byok.attachment_problems() TO byok_admin;

-- lifecycle: master key rotation
-- The Rust functions byok._rewrap, byok._ciphertext_version and
-- byok._loaded_key_versions (src/rewrap.rs, declared as pgrx declares
-- them), then sql/rewrap.sql verbatim, then PUBLIC's EXECUTE revoked from
-- every new routine (grants.sql does that on a fresh install).
CREATE FUNCTION byok."_ciphertext_version"(
	"ciphertext" bytea
) RETURNS bigint
IMMUTABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'ciphertext_version_wrapper';

CREATE FUNCTION byok."_loaded_key_versions"() RETURNS TABLE (
	"version" bigint,
	"is_primary" bool
)
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'loaded_key_versions_wrapper';

CREATE FUNCTION byok."_rewrap"(
	"key_id" uuid,
	"workspace_id" uuid,
	"vendor" TEXT,
	"ciphertext" bytea
) RETURNS bytea
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'rewrap_wrapper';

-- Live ciphertexts per master key version, next to the versions this
-- backend has loaded. `keys` falling to 0 for a version is rewrap's
-- progress; a row with version NULL counts ciphertexts that are not a
-- readable pg_byok envelope.
CREATE VIEW byok.key_versions AS
WITH loaded AS (
    SELECT l.version, l.is_primary FROM byok._loaded_key_versions() l
), used AS (
    SELECT byok._ciphertext_version(k.ciphertext) AS version, count(*) AS keys
      FROM byok.keys k
     WHERE k.ciphertext IS NOT NULL
     GROUP BY 1
)
SELECT coalesce(l.version, u.version) AS version,
       coalesce(u.keys, 0::bigint) AS keys,
       coalesce(l.is_primary, false) AS is_primary,
       l.version IS NOT NULL AS loaded,
       coalesce(l.version, u.version)
           < coalesce(nullif(pg_catalog.current_setting('byok.min_decrypt_version', true), ''), '1')::bigint
           AS retired
  FROM loaded l FULL JOIN used u ON u.version = l.version
 ORDER BY 1 NULLS LAST;
COMMENT ON VIEW byok.key_versions IS
    'pg_byok: how many live keys each master key version protects (rewrap progress)';

-- Live keys not sealed under `primary_version` (rewrap's remaining work),
-- and those among them under a version below `below`.
CREATE FUNCTION byok._keys_not_under(primary_version bigint, below bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FROM byok.keys k
     WHERE k.ciphertext IS NOT NULL
       AND byok._ciphertext_version(k.ciphertext) IS DISTINCT FROM primary_version
       AND (below IS NULL OR coalesce(byok._ciphertext_version(k.ciphertext), 0) < below)
$$;

-- One batch: lock up to batch_size live keys after `after` (in id order)
-- that are not under the primary, skipping rows another transaction holds
-- (a revoke or rotation in progress: the next pass takes them), and
-- rewrap each in its own subtransaction, so a key that cannot be opened
-- (tampered, its version missing or retired) is reported and passed over
-- instead of stopping the batch. A row revoked meanwhile is re-checked
-- under the lock (READ COMMITTED) and skipped: its NULL ciphertext stays.
CREATE FUNCTION byok._rewrap_batch(batch_size integer, after uuid, primary_version bigint,
                                   OUT rewrapped integer, OUT failed integer, OUT last_id uuid)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    sealed bytea;
BEGIN
    rewrapped := 0;
    failed := 0;
    FOR r IN
        SELECT k.id, k.workspace_id, k.vendor, k.ciphertext FROM byok.keys k
         WHERE k.ciphertext IS NOT NULL
           AND byok._ciphertext_version(k.ciphertext) IS DISTINCT FROM primary_version
           AND (after IS NULL OR k.id > after)
         ORDER BY k.id
         LIMIT batch_size
           FOR UPDATE SKIP LOCKED
    LOOP
        last_id := r.id;
        BEGIN
            sealed := byok._rewrap(r.id, r.workspace_id, r.vendor, r.ciphertext);
            IF sealed IS NOT NULL THEN
                UPDATE byok.keys SET ciphertext = sealed WHERE id = r.id;
                rewrapped := rewrapped + 1;
            END IF;
        EXCEPTION WHEN data_corrupted OR object_not_in_prerequisite_state THEN
            failed := failed + 1;
            RAISE WARNING 'pg_byok rewrap: key % (workspace %, %) not rewrapped: %',
                r.id, r.workspace_id, r.vendor, SQLERRM;
        END;
    END LOOP;
END
$$;

-- CALL byok.rewrap(): re-encrypt every live key still under an older
-- master key version with the primary, batch_size keys per transaction.
-- Resumable: a key is rewrapped when its transaction commits, so a rewrap
-- that is cancelled or killed loses at most one batch, and calling it
-- again carries on. Progress goes out as NOTICEs and shows in
-- byok.key_versions. With retire_below, it then checks that no live key
-- is left under a version below it (55000 if one is), or with force
-- revokes those keys, so the versions can be retired.
--
-- A procedure with COMMIT cannot be SECURITY DEFINER nor carry a SET
-- clause, so it runs as its (superuser) caller, pins search_path for each
-- of its transactions itself, and leaves the work to the functions above.
CREATE PROCEDURE byok.rewrap(batch_size integer DEFAULT 1000, retire_below integer DEFAULT NULL,
                             force boolean DEFAULT false)
LANGUAGE plpgsql AS $$
DECLARE
    primary_version bigint;
    after uuid;
    b record;
    done bigint := 0;
    failed bigint := 0;
    pass integer := 0;
    to_do bigint;
    left_over bigint;
    stranded uuid[];
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'only a superuser may rewrap stored keys under the primary master key',
            HINT = 'Run it as the cluster''s superuser, in a migration.';
    END IF;
    PERFORM byok._require(batch_size, 'batch_size');
    PERFORM byok._require(force, 'force');
    IF batch_size NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('batch_size is %s; it must be between 1 and 100000', batch_size),
            HINT = 'Pass batch_size => 1000 (one transaction per batch of that many keys).';
    END IF;
    -- Raises 55000 when no keyring is loaded.
    SELECT s.version INTO primary_version FROM byok.master_key_status() s WHERE s.is_primary;
    IF retire_below IS NOT NULL AND (retire_below < 1 OR retire_below > primary_version) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('retire_below is %s; the primary master key version is %s and cannot be retired',
                             retire_below, primary_version),
            HINT = 'Pass a version from 2 up to the primary version: versions below it are retired.';
    END IF;
    -- Counted once: a count per batch would scan the table once per batch.
    to_do := byok._keys_not_under(primary_version);
    RAISE NOTICE 'pg_byok rewrap: % keys to move to master key version %', to_do, primary_version;
    -- A key locked by another transaction is skipped in one pass and taken
    -- in the next; three passes end even if a key stays locked meanwhile.
    LOOP
        pass := pass + 1;
        after := NULL;
        failed := 0;
        LOOP
            SELECT * INTO b FROM byok._rewrap_batch(batch_size, after, primary_version);
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            EXIT WHEN b.last_id IS NULL;
            after := b.last_id;
            done := done + b.rewrapped;
            failed := failed + b.failed;
            RAISE NOTICE 'pg_byok rewrap: % of % keys rewrapped, % failed in this pass',
                done, to_do, failed;
        END LOOP;
        left_over := byok._keys_not_under(primary_version);
        EXIT WHEN left_over <= failed OR pass >= 3;
        PERFORM pg_catalog.pg_sleep(0.2);
    END LOOP;
    RAISE NOTICE 'pg_byok rewrap: done; % keys rewrapped, % still under older versions (see byok.key_versions)',
        done, left_over;

    IF retire_below IS NOT NULL THEN
        SELECT coalesce(array_agg(k.id ORDER BY k.id), '{}') INTO stranded FROM byok.keys k
         WHERE k.ciphertext IS NOT NULL
           AND coalesce(byok._ciphertext_version(k.ciphertext), 0) < retire_below;
        IF cardinality(stranded) > 0 AND NOT force THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('master key versions below %s still protect %s keys; not retiring them',
                                 retire_below, cardinality(stranded)),
                HINT = 'See the warnings above and byok.key_versions: load the versions those keys need and '
                       'run byok.rewrap again, or pass force => true to revoke those keys.';
        END IF;
        IF cardinality(stranded) > 0 THEN
            PERFORM byok._revoke(stranded, NULL,
                format('its master key version was retired (below %s)', retire_below), 'master_key_retired');
            RAISE WARNING 'pg_byok rewrap: revoked % keys still under master key versions below %',
                cardinality(stranded), retire_below;
        END IF;
        RAISE NOTICE 'pg_byok rewrap: no live key needs master key versions below %', retire_below
            USING HINT = format('Retire them: ALTER SYSTEM SET byok.min_decrypt_version = %s; '
                                'SELECT pg_reload_conf(); then remove them from the keyring file.', retire_below);
    END IF;
END
$$;
COMMENT ON PROCEDURE byok.rewrap(integer, integer, boolean) IS
    'Re-encrypt keys under older master key versions with the primary, a batch per transaction; resumable';

REVOKE ALL ON FUNCTION byok._ciphertext_version(bytea), byok._loaded_key_versions(),
    byok._rewrap(uuid, uuid, text, bytea), byok._keys_not_under(bigint, bigint),
    byok._rewrap_batch(integer, uuid, bigint) FROM PUBLIC;
REVOKE ALL ON PROCEDURE byok.rewrap(integer, integer, boolean) FROM PUBLIC;
REVOKE ALL ON byok.key_versions FROM PUBLIC;

-- ===========================================================================
-- use_key's hot path and its record of uses (issue 11, sql/usage.sql):
-- use_key becomes one Rust function; each use is counted in shared memory
-- and flushed by pg_byok's background worker into byok.key_usage (which
-- moves keys.last_used_at; the column stays); byok.use_audit = 'each' keeps
-- 0.1.0's audit row per call; audit retention deletes through the one path
-- the append-only trigger lets through.

-- The Rust functions, declared as pgrx declares them.
CREATE FUNCTION byok._audit_pruning("at" timestamp with time zone) RETURNS bool
VOLATILE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'audit_pruning_wrapper';
CREATE FUNCTION byok._usage_counters() RETURNS TABLE (
    "database_oid" bigint,
    "key_id" uuid,
    "role_oid" bigint,
    "hour" timestamp with time zone,
    "uses" bigint,
    "last_used_at" timestamp with time zone
)
STRICT VOLATILE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'usage_counters_wrapper';
CREATE FUNCTION byok.usage_status() RETURNS TABLE (
    "preloaded" bool,
    "slots_used" INT,
    "slots" INT,
    "flusher_database_oid" bigint,
    "last_flush_at" timestamp with time zone,
    "uncounted" bigint
)
STRICT VOLATILE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'usage_status_wrapper';
-- Same name, arguments and result: replacing keeps its grants.
-- No SET clause: its hot path needs none, and pins the search_path itself
-- before any query (src/pinned_path.rs).
CREATE OR REPLACE FUNCTION byok.use_key("workspace_id" uuid, "vendor" text) RETURNS TEXT
VOLATILE SECURITY DEFINER
LANGUAGE c AS 'MODULE_PATHNAME', 'use_key_wrapper';

-- key_health's last use: keys.last_used_at (moved by each flush) or a use
-- still counted in shared memory, whichever is later (sql/health.sql).
CREATE OR REPLACE FUNCTION byok.key_health(workspace_id uuid)
RETURNS TABLE(key_id uuid, vendor text, masked text, status text, vendor_account text,
              last_checked_at timestamptz, last_outcome text, next_check_due timestamptz,
              last_used_at timestamptz, idle boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    every integer := byok._revalidate_interval();
    idle_after interval := make_interval(days => byok._idle_key_days());
BEGIN
    PERFORM byok._require(key_health.workspace_id, 'workspace_id');
    IF NOT byok.authorize(key_health.workspace_id) THEN
        PERFORM byok._deny_workspace(key_health.workspace_id);
    END IF;
    -- A queued job is the next check; otherwise an active key is due one
    -- interval after its last check (never, with the schedule off).
    RETURN QUERY
        SELECT k.id, k.vendor, k.masked, k.status, k.vendor_account,
               k.checked_at, k.check_outcome,
               coalesce(j.run_after,
                        CASE WHEN k.status = 'active' AND every > 0
                             THEN coalesce(k.checked_at, k.validated_at, k.created_at)
                                  + make_interval(secs => every) END),
               greatest(k.last_used_at, used.at, live.at),
               k.status = 'active'
                   AND coalesce(greatest(k.last_used_at, used.at, live.at), k.validated_at, k.created_at)
                       < clock_timestamp() - idle_after
          FROM byok.keys k
          LEFT JOIN byok.jobs j ON j.key_id = k.id
          -- The last flushed use (keys.last_used_at has it to the hour),
          -- and uses counted in shared memory since the last flush (on a
          -- standby: all of them).
          LEFT JOIN LATERAL (SELECT max(u.last_used_at) AS at FROM byok.key_usage u
                              WHERE u.key_id = k.id) used ON true
          LEFT JOIN (SELECT c.key_id, max(c.last_used_at) AS at
                       FROM byok._usage_counters() c
                      WHERE c.database_oid = (SELECT d.oid::bigint FROM pg_database d
                                               WHERE d.datname = current_database())
                      GROUP BY c.key_id) live ON live.key_id = k.id
         WHERE k.workspace_id = key_health.workspace_id
           AND k.status IN ('pending', 'active', 'unverified')
         ORDER BY k.vendor, k.created_at DESC, k.id;
END
$$;

-- sql/bootstrap.sql's append-only trigger, retention let through.
CREATE OR REPLACE FUNCTION byok._audit_is_append_only() RETURNS trigger
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

-- Room on each key's page for in-place (HOT) updates, as a fresh install
-- creates it (sql/bootstrap.sql); pages written under 0.1.0 get it as they
-- are rewritten.
ALTER TABLE byok.keys SET (fillfactor = 90);

-- sql/usage.sql as a fresh install runs it.
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

-- Nothing new is executable by PUBLIC (grants.sql's loop, for a fresh install).
REVOKE ALL ON FUNCTION byok._audit_pruning(timestamp with time zone), byok._usage_counters(),
    byok.usage_status(),
    byok._count_uses(uuid[], bigint[], timestamp with time zone[], bigint[], timestamp with time zone[])
    FROM PUBLIC;
-- ---------------------------------------------------------------------------
-- vault storage (issue 10): Supabase Vault as a storage backend.
-- The Rust functions of src/vault.rs (declared as pgrx declares them), then
-- sql/vault.sql verbatim from its first statement, then add_key and
-- claim_jobs as api.sql and queue.sql now define them (they store and open
-- through byok._store / byok._open_stored; use_key, in Rust since the
-- section above, opens through the same code), then PUBLIC's EXECUTE
-- revoked from every new routine (grants.sql does that on a fresh install).
-- ---------------------------------------------------------------------------
CREATE FUNCTION byok."_store"(
	"workspace_id" uuid, /* Option < Uuid > */
	"vendor" text, /* Option < TextArg < '_ > > */
	"api_key" text /* Option < TextArg < '_ > > */
) RETURNS TABLE (
	"id" uuid,  /* Uuid */
	"vendor" TEXT,  /* String */
	"masked" TEXT,  /* String */
	"storage" TEXT,  /* String */
	"ciphertext" bytea,  /* :: std :: option :: Option < Vec < u8 > > */
	"vault_secret_id" uuid  /* Option < Uuid > */
)
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'store_wrapper';

CREATE FUNCTION byok."_open_stored"(
	"key_id" uuid, /* Option < Uuid > */
	"workspace_id" uuid, /* Option < Uuid > */
	"vendor" text, /* Option < TextArg < '_ > > */
	"ciphertext" bytea, /* Option < & [u8] > */
	"vault_secret_id" uuid /* Option < Uuid > */
) RETURNS TEXT /* String */
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'open_stored_wrapper';

CREATE FUNCTION byok."_to_vault"(
	"key_id" uuid, /* Option < Uuid > */
	"workspace_id" uuid, /* Option < Uuid > */
	"vendor" TEXT, /* Option < & str > */
	"ciphertext" bytea /* Option < & [u8] > */
) RETURNS uuid /* Uuid */
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'to_vault_wrapper';

CREATE FUNCTION byok."_to_native"(
	"key_id" uuid, /* Option < Uuid > */
	"workspace_id" uuid, /* Option < Uuid > */
	"vendor" TEXT, /* Option < & str > */
	"vault_secret_id" uuid /* Option < Uuid > */
) RETURNS bytea /* Vec < u8 > */
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'to_native_wrapper';

CREATE FUNCTION byok."_vault_delete"(
	"secret_id" uuid /* Option < Uuid > */
) RETURNS void
VOLATILE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'vault_delete_wrapper';

-- A key lives in exactly one place while it is alive, and in none once it
-- is dead. vault_secret_id is pg_byok's own mapping to the Vault secret
-- (named byok/<workspace_id>/<key_id>; the name is checked on every read).
ALTER TABLE byok.keys
    ADD COLUMN storage text NOT NULL DEFAULT 'native' CHECK (storage IN ('native', 'vault')),
    ADD COLUMN vault_secret_id uuid;
ALTER TABLE byok.keys DROP CONSTRAINT keys_dead_keys_hold_no_ciphertext;
ALTER TABLE byok.keys
    ADD CONSTRAINT keys_dead_keys_hold_no_secret
        CHECK ((status IN ('invalid', 'revoked')) = (ciphertext IS NULL AND vault_secret_id IS NULL)),
    ADD CONSTRAINT keys_storage_holds_the_secret
        CHECK (CASE storage WHEN 'native' THEN vault_secret_id IS NULL ELSE ciphertext IS NULL END);
CREATE UNIQUE INDEX keys_by_vault_secret ON byok.keys (vault_secret_id)
    WHERE vault_secret_id IS NOT NULL;
COMMENT ON COLUMN byok.keys.storage IS 'native: ciphertext holds pg_byok''s envelope; vault: vault_secret_id names a Supabase Vault secret';

-- NULL when pg_byok may use Supabase Vault in this database, else why not:
-- not_installed; too_old:<version> (no vault._crypto_aead_det_* functions,
-- before 0.3.0); unsafe:<object> when one of the objects pg_byok would
-- call or write is not the genuine one -- not owned by a superuser, not a
-- member of the extension, a function not in C, or a table carrying
-- triggers, rules or row-level security, through which an app role's code
-- would run with pg_byok's power.
CREATE FUNCTION byok._vault_problem() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ext oid;
    ext_version text;
    fns regprocedure[];
    secrets regclass;
    bad text;
BEGIN
    SELECT e.oid, e.extversion INTO ext, ext_version FROM pg_extension e WHERE e.extname = 'supabase_vault';
    IF NOT FOUND THEN
        RETURN 'not_installed';
    END IF;
    fns := ARRAY[to_regprocedure('vault._crypto_aead_det_encrypt(bytea, bytea, bigint, bytea, bytea)'),
                 to_regprocedure('vault._crypto_aead_det_decrypt(bytea, bytea, bigint, bytea, bytea)'),
                 to_regprocedure('vault._crypto_aead_det_noncegen()')];
    secrets := to_regclass('vault.secrets');
    IF array_position(fns, NULL) IS NOT NULL OR secrets IS NULL THEN
        RETURN 'too_old:' || ext_version;
    END IF;
    SELECT format('function %s', f) INTO bad
      FROM unnest(fns) f JOIN pg_proc p ON p.oid = f JOIN pg_roles o ON o.oid = p.proowner
     WHERE NOT o.rolsuper
        OR p.prolang <> (SELECT l.oid FROM pg_language l WHERE l.lanname = 'c')
        OR NOT EXISTS (SELECT 1 FROM pg_depend d
                        WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                          AND d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext AND d.deptype = 'e')
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RETURN 'unsafe:' || bad;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner
                    WHERE c.oid = secrets AND c.relkind = 'r' AND o.rolsuper
                      AND NOT c.relrowsecurity
                      AND EXISTS (SELECT 1 FROM pg_depend d
                                   WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                     AND d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext
                                     AND d.deptype = 'e'))
       OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = secrets AND NOT t.tgisinternal)
       OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = secrets) THEN
        RETURN 'unsafe:table vault.secrets';
    END IF;
    RETURN NULL;
END
$$;

-- A key's Vault secret goes when its key dies (revoke, rotation, invalid,
-- workspace pause or delete: every path sets the status, so none can
-- forget it) or when the key moves to native storage, in the same
-- transaction: a dead key leaves no ciphertext in Vault either.
CREATE FUNCTION byok._keys_vault_secret() RETURNS trigger
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.status IN ('invalid', 'revoked') THEN
            NEW.vault_secret_id := NULL;
        END IF;
        IF NEW.vault_secret_id IS NOT DISTINCT FROM OLD.vault_secret_id THEN
            RETURN NEW;
        END IF;
    END IF;
    PERFORM byok._vault_delete(OLD.vault_secret_id);
    RETURN CASE WHEN TG_OP = 'UPDATE' THEN NEW ELSE OLD END;
END
$$;
CREATE TRIGGER keys_vault_secret BEFORE UPDATE OR DELETE ON byok.keys
    FOR EACH ROW WHEN (OLD.vault_secret_id IS NOT NULL) EXECUTE FUNCTION byok._keys_vault_secret();

-- Live keys per storage, and what protects them.
CREATE VIEW byok.storage_status AS
SELECT s.storage, s.root_of_trust,
       (SELECT count(*) FROM byok.keys k
         WHERE k.storage = s.storage AND k.status NOT IN ('invalid', 'revoked')) AS keys
  FROM (VALUES ('native', 'pg_byok master key (byok.master_key_file or BYOK_MASTER_KEY)'),
               ('vault', 'Supabase Vault root key (vault.getkey_script)')) s(storage, root_of_trust)
 ORDER BY s.storage;
COMMENT ON VIEW byok.storage_status IS
    'pg_byok: live keys per storage (native, vault) and the root of trust of each (migrate_storage progress)';
GRANT SELECT ON byok.storage_status TO byok_admin;
GRANT SELECT (storage) ON byok.keys TO byok_admin;

-- Live keys not yet in `target`.
CREATE FUNCTION byok._keys_not_in(target text) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FROM byok.keys k WHERE k.storage <> target AND k.status NOT IN ('invalid', 'revoked')
$$;

-- One batch: lock up to batch_size live keys after `after` (id order) not
-- yet in `target`, skipping rows another transaction holds (a use, revoke
-- or validation in progress: the next pass takes them); move each in its
-- own subtransaction, so that a key that cannot be opened is reported and
-- passed over. One UPDATE moves a key: the old place is emptied in the
-- statement that fills the new one (a vault secret left behind is deleted
-- by the trigger above), so after COMMIT no key is in both places or none.
CREATE FUNCTION byok._migrate_batch(target text, batch_size integer, after uuid,
                                    OUT moved integer, OUT failed integer, OUT last_id uuid)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    moved := 0;
    failed := 0;
    FOR r IN
        SELECT k.id, k.workspace_id, k.vendor, k.ciphertext, k.vault_secret_id FROM byok.keys k
         WHERE k.storage <> target AND k.status NOT IN ('invalid', 'revoked')
           AND (after IS NULL OR k.id > after)
         ORDER BY k.id
         LIMIT batch_size
           FOR UPDATE SKIP LOCKED
    LOOP
        last_id := r.id;
        BEGIN
            IF target = 'vault' THEN
                UPDATE byok.keys
                   SET storage = 'vault', ciphertext = NULL,
                       vault_secret_id = byok._to_vault(r.id, r.workspace_id, r.vendor, r.ciphertext)
                 WHERE id = r.id;
            ELSE
                UPDATE byok.keys
                   SET storage = 'native', vault_secret_id = NULL,
                       ciphertext = byok._to_native(r.id, r.workspace_id, r.vendor, r.vault_secret_id)
                 WHERE id = r.id;
            END IF;
            moved := moved + 1;
        EXCEPTION WHEN data_corrupted OR object_not_in_prerequisite_state THEN
            failed := failed + 1;
            RAISE WARNING 'pg_byok migrate_storage: key % (workspace %, %) not moved: %',
                r.id, r.workspace_id, r.vendor, SQLERRM;
        END;
    END LOOP;
END
$$;

-- CALL byok.migrate_storage(target => 'vault' | 'native'): move every live
-- key to that storage, batch_size keys per transaction, while the keys
-- stay in use. Resumable: a key has moved once its batch commits, so an
-- interrupted migration loses at most one batch, and calling it again
-- carries on. Progress as NOTICEs and in byok.storage_status. It does not
-- change byok.storage (where new keys go): set that first.
--
-- A procedure with COMMIT cannot be SECURITY DEFINER nor carry a SET
-- clause: it runs as its (superuser) caller and pins search_path for each
-- of its transactions itself, like byok.rewrap.
CREATE PROCEDURE byok.migrate_storage(target text, batch_size integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    after uuid;
    b record;
    done bigint := 0;
    failed bigint := 0;
    pass integer := 0;
    to_do bigint;
    left_over bigint;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'only a superuser may move stored keys between storages',
            HINT = 'Run it as the cluster''s superuser, in a migration.';
    END IF;
    PERFORM byok._require(target, 'target');
    PERFORM byok._require(batch_size, 'batch_size');
    IF target NOT IN ('native', 'vault') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('target is %s; it must be native or vault', quote_literal(left(target, 40))),
            HINT = 'Pass target => ''vault'' (Supabase Vault) or target => ''native'' (pg_byok''s keyring).';
    END IF;
    IF batch_size NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('batch_size is %s; it must be between 1 and 100000', batch_size),
            HINT = 'Pass batch_size => 1000 (one transaction per batch of that many keys).';
    END IF;
    to_do := byok._keys_not_in(target);
    RAISE NOTICE 'pg_byok migrate_storage: % keys to move to %', to_do, target;
    LOOP
        pass := pass + 1;
        after := NULL;
        failed := 0;
        LOOP
            SELECT * INTO b FROM byok._migrate_batch(target, batch_size, after);
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            EXIT WHEN b.last_id IS NULL;
            after := b.last_id;
            done := done + b.moved;
            failed := failed + b.failed;
            RAISE NOTICE 'pg_byok migrate_storage: % of % keys moved to %, % failed in this pass',
                done, to_do, target, failed;
        END LOOP;
        left_over := byok._keys_not_in(target);
        EXIT WHEN left_over <= failed OR pass >= 3;
        PERFORM pg_catalog.pg_sleep(0.2);
    END LOOP;
    RAISE NOTICE 'pg_byok migrate_storage: done; % keys moved to %, % live keys still elsewhere (see byok.storage_status)',
        done, target, left_over;
END
$$;
COMMENT ON PROCEDURE byok.migrate_storage(text, integer) IS
    'Move every live key to native or Supabase Vault storage, a batch per transaction; resumable';

CREATE OR REPLACE FUNCTION byok.add_key(workspace_id uuid, vendor text, api_key text, label text DEFAULT NULL)
RETURNS byok.key_info
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    sealed record;
    k byok.keys;
    clean_label text;
    state text;
BEGIN
    PERFORM byok._require(add_key.workspace_id, 'workspace_id');
    PERFORM byok._require(add_key.vendor, 'vendor');
    PERFORM byok._require(add_key.api_key, 'api_key');
    IF NOT byok.authorize(add_key.workspace_id) THEN
        PERFORM byok._deny_workspace(add_key.workspace_id);
    END IF;
    state := byok._workspace_state(add_key.workspace_id);
    -- A workspace the attached table does not have (yet) may take keys --
    -- apps create rows and keys in either order -- but the caller is told.
    IF state = ' missing' THEN
        RAISE NOTICE 'pg_byok: workspace % is not in the attached workspace table', add_key.workspace_id
            USING HINT = 'Its keys are revoked with the workspace only once its row exists.';
    ELSIF state = ANY (byok._inactive_statuses()) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('workspace %s is %s; it cannot take new keys', add_key.workspace_id, state),
            HINT = 'Reactivate the workspace first, then add the key again.';
    END IF;
    clean_label := byok._clean_text(add_key.label, 'label', 200);
    -- Normalise, check the shape and encrypt, all in Rust, before any row
    -- exists: into pg_byok's envelope or a Supabase Vault secret (byok.storage).
    SELECT * INTO sealed FROM byok._store(add_key.workspace_id, add_key.vendor, add_key.api_key);
    INSERT INTO byok.keys (id, workspace_id, vendor, label, masked, status, ciphertext, storage, vault_secret_id)
    VALUES (sealed.id, add_key.workspace_id, sealed.vendor, clean_label, sealed.masked, 'pending',
            sealed.ciphertext, sealed.storage, sealed.vault_secret_id)
    RETURNING * INTO k;
    INSERT INTO byok.jobs (key_id) VALUES (k.id);
    -- Identical notifications within a transaction are delivered once.
    PERFORM pg_notify('byok_jobs', '');
    PERFORM byok._audit('add', k.id, k.workspace_id, k.vendor, 'pending', clean_label);
    RETURN byok._info(k);
END
$$;
COMMENT ON FUNCTION byok.add_key(uuid, text, text, text) IS
    'Store a vendor key for a workspace (encrypted), queue its validation; returns the masked key_info';


CREATE OR REPLACE FUNCTION byok.claim_jobs(worker text, max_jobs integer DEFAULT 16, lease_seconds integer DEFAULT 60)
RETURNS TABLE(job_id bigint, key_id uuid, workspace_id uuid, vendor text, api_key text,
              attempt integer, lease_token uuid)
-- work_mem: the result (plaintext keys) is built in a tuplestore, which must
-- never spill to a temporary file; 1,000 keys need well under 1 MB.
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET work_mem = '4MB' AS $$
#variable_conflict use_column
DECLARE
    who text := byok._check_worker_args(claim_jobs.worker);
    limit_attempts integer := byok._max_attempts();
    r record;
BEGIN
    IF claim_jobs.max_jobs IS NULL OR claim_jobs.max_jobs NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'max_jobs must be between 1 and 1000',
            HINT = 'Claim small batches; call again for more.';
    END IF;
    IF claim_jobs.lease_seconds IS NULL OR claim_jobs.lease_seconds NOT BETWEEN 5 AND 3600 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'lease_seconds must be between 5 and 3600',
            HINT = 'Use a lease a little longer than the vendor request timeout.';
    END IF;
    -- No keyring at all is the operator's problem and fails the call (55000);
    -- a key needing an absent version only defers that key (below).
    PERFORM byok._require_keyring();
    FOR r IN
        WITH picked AS (
            SELECT j.id FROM byok.jobs j
             WHERE j.run_after <= clock_timestamp()
             ORDER BY j.run_after, j.id
             LIMIT claim_jobs.max_jobs
             FOR UPDATE SKIP LOCKED
        )
        UPDATE byok.jobs j
           SET attempts = j.attempts + 1, lease_token = gen_random_uuid(), leased_by = who,
               run_after = clock_timestamp() + make_interval(secs => claim_jobs.lease_seconds)
          FROM picked p
         WHERE j.id = p.id
        RETURNING j.id, j.key_id, j.attempts, j.lease_token
    LOOP
        IF r.attempts > limit_attempts THEN
            PERFORM byok._give_up(r.id);
            CONTINUE;
        END IF;
        DECLARE
            k byok.keys;
        BEGIN
            SELECT * INTO k FROM byok.keys WHERE id = r.key_id;
            IF NOT FOUND OR k.status IN ('invalid', 'revoked') THEN
                -- The key died (revoked, rotated, invalid) after its job was
                -- queued: nothing is left to validate. Retire the job rather
                -- than fail the batch for every worker.
                DELETE FROM byok.jobs WHERE id = r.id;
                RAISE WARNING 'pg_byok: job % was for key %, which is %; the job was retired',
                    r.id, r.key_id, coalesce(k.status, 'gone');
                CONTINUE;
            END IF;
            job_id := r.id; key_id := k.id; workspace_id := k.workspace_id; vendor := k.vendor;
            attempt := r.attempts; lease_token := r.lease_token;
            api_key := byok._open_stored(k.id, k.workspace_id, k.vendor, k.ciphertext, k.vault_secret_id);
            RETURN NEXT;
        EXCEPTION WHEN data_corrupted THEN
            -- A ciphertext that fails authentication can never be validated:
            -- retire the key with a clear reason rather than block the queue.
            UPDATE byok.keys SET status = 'invalid', ciphertext = NULL,
                   status_detail = 'the stored ciphertext failed authentication (tampered or corrupted); add the key again'
             WHERE id = r.key_id;
            DELETE FROM byok.jobs WHERE id = r.id;
            PERFORM byok._audit('validate', r.key_id, k.workspace_id, k.vendor, 'tampered', NULL);
            RAISE WARNING 'pg_byok: key % failed authentication and was retired', r.key_id;
        WHEN object_not_in_prerequisite_state THEN
            -- The master key version this key needs is absent or different:
            -- keep the key, hand the job back without spending the attempt,
            -- and let the rest of the queue flow.
            UPDATE byok.jobs SET attempts = greatest(attempts - 1, 0), lease_token = NULL, leased_by = NULL,
                   run_after = clock_timestamp() + interval '5 minutes', last_error = left(SQLERRM, 500)
             WHERE id = r.id;
            RAISE WARNING 'pg_byok: key % cannot be decrypted with this keyring: %', r.key_id, SQLERRM;
        END;
    END LOOP;
END
$$;
COMMENT ON FUNCTION byok.claim_jobs(text, integer, integer) IS
    'Lease up to max_jobs ready validation jobs (SKIP LOCKED), with their plaintext keys; byok_worker only';


REVOKE ALL ON FUNCTION byok._store(uuid, text, text), byok._open_stored(uuid, uuid, text, bytea, uuid),
    byok._to_vault(uuid, uuid, text, bytea), byok._to_native(uuid, uuid, text, uuid),
    byok._vault_delete(uuid), byok._vault_problem(), byok._keys_vault_secret(),
    byok._keys_not_in(text), byok._migrate_batch(text, integer, uuid) FROM PUBLIC;
REVOKE ALL ON PROCEDURE byok.migrate_storage(text, integer) FROM PUBLIC;
REVOKE ALL ON byok.storage_status FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- add_key speed (issue 11)
-- add_key on the PostgREST path ran ~0.36x vault.create_secret and wrote
-- 1,284 B of WAL per key (BENCHMARKS.md, "add_key speed"). The queue is
-- UNLOGGED and has no foreign key (it is derived from the keys' status, and
-- rebuilt after a crash by byok._rebuild_lost_queue); the audit trail has no
-- primary key index; add_key runs no query for its NULL checks, label or
-- audit call; _info and _as_uuid lose their SET clause and are inlined.
-- Each function here is the whole of its fresh-install text.

ALTER TABLE byok.jobs DROP CONSTRAINT jobs_key_id_fkey;
ALTER TABLE byok.jobs SET UNLOGGED;
ALTER TABLE byok.audit_log DROP CONSTRAINT audit_log_pkey;

-- One row while byok.jobs has survived since it was last (re)built: UNLOGGED
-- like the queue, so the crash that empties the queue empties this too.
CREATE UNLOGGED TABLE byok.queue_intact (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO byok.queue_intact DEFAULT VALUES;
REVOKE ALL ON byok.queue_intact FROM PUBLIC;

CREATE OR REPLACE FUNCTION byok._info(k byok.keys) RETURNS byok.key_info
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(k.id, k.workspace_id, k.vendor, k.label, k.masked, k.status, k.status_detail,
               k.created_at, k.validated_at, k.revoked_at, k.vendor_account)::byok.key_info
$$;

CREATE OR REPLACE FUNCTION byok._as_uuid(value text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value OPERATOR(pg_catalog.~*) '^\s*(\{[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}|[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})\s*$'
                THEN pg_catalog.btrim(value, E' \t\n\r\f\x0B')::pg_catalog.uuid END
$$;

CREATE FUNCTION byok._rebuild_lost_queue() RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    IF EXISTS (SELECT 1 FROM byok.queue_intact) THEN
        RETURN 0;
    END IF;
    -- One transaction rebuilds: a concurrent one waits on the marker's key
    -- and then inserts nothing.
    INSERT INTO byok.queue_intact DEFAULT VALUES ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    INSERT INTO byok.jobs (key_id)
    SELECT k.id FROM byok.keys k WHERE k.status = 'pending' ORDER BY k.created_at, k.id
    ON CONFLICT (key_id) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('byok_jobs', '');
        RAISE WARNING 'pg_byok: the validation queue was lost (a crash or a promotion); % pending keys were queued again', n;
    END IF;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION byok.enqueue_due_revalidations(max_keys integer DEFAULT 100) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    every integer := byok._revalidate_interval();
    n integer;
BEGIN
    IF enqueue_due_revalidations.max_keys IS NULL
       OR enqueue_due_revalidations.max_keys NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'max_keys must be between 1 and 10000',
            HINT = 'Queue a batch per timer tick; the rest are queued on the next.';
    END IF;
    PERFORM byok._rebuild_lost_queue();
    IF every = 0 THEN
        RETURN 0;
    END IF;
    WITH due AS (
        SELECT k.id, k.workspace_id, k.vendor FROM byok.keys k
         WHERE k.status = 'active'
           AND coalesce(k.checked_at, k.validated_at, k.created_at)
               <= clock_timestamp() - make_interval(secs => every)
           AND NOT EXISTS (SELECT 1 FROM byok.jobs j WHERE j.key_id = k.id)
         ORDER BY coalesce(k.checked_at, k.validated_at, k.created_at), k.id
         LIMIT enqueue_due_revalidations.max_keys
           FOR UPDATE OF k SKIP LOCKED
    ), queued AS (
        INSERT INTO byok.jobs (key_id) SELECT d.id FROM due d
        ON CONFLICT (key_id) DO NOTHING
        RETURNING byok.jobs.key_id
    ), audited AS (
        INSERT INTO byok.audit_log (actor_role, actor_sub, action, key_id, workspace_id, vendor, outcome, detail)
        SELECT byok._caller(), byok._jwt_sub(), 'revalidate', d.id, d.workspace_id, d.vendor, 'scheduled',
               format('last checked more than %s ago', make_interval(secs => every))
          FROM due d JOIN queued q ON q.key_id = d.id
    )
    SELECT count(*) INTO n FROM queued;
    IF n > 0 THEN
        PERFORM pg_notify('byok_jobs', '');
    END IF;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION byok.add_key(workspace_id uuid, vendor text, api_key text, label text DEFAULT NULL)
RETURNS byok.key_info
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    k byok.keys;
    clean_label text;
    state text;
BEGIN
    -- Every PERFORM is a query of its own, and every call of a function with
    -- a SET clause switches search_path twice: the common case here runs
    -- neither for the NULL checks, the label or the audit row (where the
    -- time goes: BENCHMARKS.md, "add_key speed"). Errors are unchanged.
    IF add_key.workspace_id IS NULL OR add_key.vendor IS NULL OR add_key.api_key IS NULL THEN
        PERFORM byok._require(add_key.workspace_id, 'workspace_id');
        PERFORM byok._require(add_key.vendor, 'vendor');
        PERFORM byok._require(add_key.api_key, 'api_key');
    END IF;
    IF NOT byok.authorize(add_key.workspace_id) THEN
        PERFORM byok._deny_workspace(add_key.workspace_id);
    END IF;
    state := byok._workspace_state(add_key.workspace_id);
    -- A workspace the attached table does not have (yet) may take keys --
    -- apps create rows and keys in either order -- but the caller is told.
    IF state = ' missing' THEN
        RAISE NOTICE 'pg_byok: workspace % is not in the attached workspace table', add_key.workspace_id
            USING HINT = 'Its keys are revoked with the workspace only once its row exists.';
    ELSIF state = ANY (byok._inactive_statuses()) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('workspace %s is %s; it cannot take new keys', add_key.workspace_id, state),
            HINT = 'Reactivate the workspace first, then add the key again.';
    END IF;
    IF add_key.label IS NOT NULL THEN
        clean_label := byok._clean_text(add_key.label, 'label', 200);
    END IF;
    -- One statement: store (normalise, check the shape and encrypt, all in
    -- Rust, before any row exists: into pg_byok's envelope or a Supabase
    -- Vault secret, as byok.storage says), then the key row, its job and its
    -- audit row (byok._audit('add', ...) written out).
    WITH sealed AS (
        SELECT * FROM byok._store(add_key.workspace_id, add_key.vendor, add_key.api_key)
    ), new_key AS (
        INSERT INTO byok.keys (id, workspace_id, vendor, label, masked, status, ciphertext, storage, vault_secret_id)
        SELECT s.id, add_key.workspace_id, s.vendor, clean_label, s.masked, 'pending', s.ciphertext,
               s.storage, s.vault_secret_id
          FROM sealed s
        RETURNING *
    ), queued AS (
        INSERT INTO byok.jobs (key_id) SELECT n.id FROM new_key n
    ), audited AS (
        INSERT INTO byok.audit_log (actor_role, actor_sub, action, key_id, workspace_id, vendor, outcome, detail)
        SELECT byok._caller(), byok._jwt_sub(), 'add', n.id, n.workspace_id, n.vendor, 'pending',
               left(byok.redact(clean_label), 1000)
          FROM new_key n
    )
    SELECT * INTO k FROM new_key;
    -- Identical notifications within a transaction are delivered once.
    PERFORM pg_notify('byok_jobs', '');
    RETURN byok._info(k);
END
$$;

REVOKE ALL ON FUNCTION byok._rebuild_lost_queue() FROM PUBLIC;

-- end of section: add_key speed
-- pipeline: byok.finish_job sets the key's status and check in one UPDATE;
-- byok.finish_jobs, many verdicts per call (both as in sql/queue.sql)
CREATE OR REPLACE FUNCTION byok.finish_job(job_id bigint, lease_token uuid, outcome text, detail text DEFAULT NULL,
                                http_status integer DEFAULT NULL, retry_after_seconds integer DEFAULT NULL,
                                vendor_account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    verdict text := lower(btrim(finish_job.outcome));
    note text;
    account text := byok._clean_text(finish_job.vendor_account, 'vendor_account', 200);
    swap_note text;
    j byok.jobs;
    k byok.keys;
    current_active byok.keys;
    now_ts timestamptz;
    checked boolean := false;
BEGIN
    PERFORM byok._require(finish_job.job_id, 'job_id');
    PERFORM byok._require(finish_job.lease_token, 'lease_token');
    PERFORM byok._require(finish_job.outcome, 'outcome');
    IF verdict NOT IN ('valid', 'invalid', 'retry', 'unverified') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown outcome %L', left(byok.redact(finish_job.outcome), 40)),
            HINT = 'outcome is one of valid, invalid, retry, unverified.';
    END IF;
    IF finish_job.http_status IS NOT NULL AND finish_job.http_status NOT BETWEEN 100 AND 599 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'http_status must be between 100 and 599',
            HINT = 'Pass the vendor''s HTTP status, or NULL when there was no answer.';
    END IF;
    IF finish_job.retry_after_seconds IS NOT NULL
       AND finish_job.retry_after_seconds NOT BETWEEN 0 AND 86400 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'retry_after_seconds must be between 0 and 86400',
            HINT = 'Pass the vendor''s Retry-After in seconds, or NULL.';
    END IF;
    -- Redact before cutting: a key cut in half would no longer look like one.
    -- (The 64 kB bound only stops a runaway body; it is far past the cut.)
    note := left(byok.redact(nullif(btrim(left(finish_job.detail, 65536)), '')), 1000);

    SELECT * INTO j FROM byok.jobs WHERE id = finish_job.job_id FOR UPDATE;
    IF NOT FOUND OR j.lease_token IS DISTINCT FROM finish_job.lease_token THEN
        RAISE NOTICE 'pg_byok: lease token for job % is stale; nothing changed', finish_job.job_id
            USING HINT = 'The lease ran out and the job was claimed again or finished elsewhere.';
        RETURN 'stale';
    END IF;
    SELECT * INTO k FROM byok.keys WHERE id = j.key_id FOR UPDATE;

    IF verdict = 'retry' AND j.attempts >= byok._max_attempts() THEN
        verdict := 'unverified';
        note := left(format('the vendor could not be reached after %s attempts%s', j.attempts,
                            coalesce(': ' || note, '')), 1000);
    END IF;

    IF verdict = 'retry' THEN
        UPDATE byok.jobs
           SET run_after = clock_timestamp() + make_interval(
                   secs => byok._retry_delay(j.attempts, finish_job.retry_after_seconds)),
               lease_token = NULL, leased_by = NULL, last_error = note
         WHERE id = j.id;
        RETURN k.status;
    END IF;

    DELETE FROM byok.jobs WHERE id = j.id;
    -- Key health (byok.key_health, and the schedule of
    -- byok.enqueue_due_revalidations): when this check ended and how. Set
    -- in the same UPDATE as the verdict's status (one row version, not two).
    now_ts := clock_timestamp();

    IF verdict = 'valid' THEN
        -- Two keys of one (workspace, vendor) validated at the same moment
        -- must not both find "no active key": serialise their activation.
        PERFORM pg_advisory_xact_lock(hashtextextended('byok.activate:' || k.workspace_id || ':' || k.vendor, 0));
        SELECT * INTO current_active FROM byok.keys
         WHERE workspace_id = k.workspace_id AND vendor = k.vendor AND status = 'active' AND id <> k.id
         FOR UPDATE;
        IF FOUND AND current_active.created_at > k.created_at THEN
            -- A newer key is already serving: this older one is superseded at once.
            PERFORM byok._revoke(ARRAY[k.id], NULL,
                format('rotated: superseded by newer key %s', current_active.masked), 'rotated');
        ELSE
            IF FOUND THEN
                -- A replacement from another vendor account is usually a
                -- paste from the wrong console: flagged, never refused.
                IF account IS NOT NULL AND current_active.vendor_account IS NOT NULL
                   AND account <> current_active.vendor_account THEN
                    swap_note := format('vendor account changed: %s replaces key %s of account %s',
                                        account, current_active.masked, current_active.vendor_account);
                END IF;
                PERFORM byok._revoke(ARRAY[current_active.id], NULL,
                    format('rotated: superseded by key %s', k.masked), 'rotated');
                PERFORM byok._audit('rotate', k.id, k.workspace_id, k.vendor,
                    CASE WHEN swap_note IS NULL THEN 'active' ELSE 'account_changed' END,
                    concat_ws('; ', format('replaces key %s', current_active.masked), swap_note));
            END IF;
            UPDATE byok.keys SET status = 'active', validated_at = now_ts,
                   status_detail = left(concat_ws('; ', swap_note, note), 1000),
                   vendor_account = coalesce(account, vendor_account),
                   checked_at = now_ts, check_outcome = verdict
             WHERE id = k.id
            RETURNING * INTO k;
            checked := true;
        END IF;
    ELSIF verdict = 'invalid' THEN
        UPDATE byok.keys SET status = 'invalid', ciphertext = NULL,
               status_detail = coalesce(note, 'the vendor rejected the key'),
               checked_at = now_ts, check_outcome = verdict
         WHERE id = k.id
        RETURNING * INTO k;
        checked := true;
    ELSIF k.status <> 'active' THEN  -- unverified; an active key being re-checked keeps serving
        UPDATE byok.keys SET status = 'unverified', status_detail = note,
               checked_at = now_ts, check_outcome = verdict
         WHERE id = k.id
        RETURNING * INTO k;
        checked := true;
    END IF;
    IF NOT checked THEN  -- superseded at once, or an active key kept serving
        UPDATE byok.keys SET checked_at = now_ts, check_outcome = verdict
         WHERE id = k.id
        RETURNING * INTO k;
    END IF;
    PERFORM byok._audit('validate', k.id, k.workspace_id, k.vendor, verdict,
        concat_ws(' ', 'http ' || finish_job.http_status, note,
                  '(account ' || account || ')'));
    RETURN k.status;
END
$$;
-- Many verdicts in one call (0.2.0): one round trip and one commit for a
-- whole batch instead of one per job, which is what bounds a sidecar's
-- throughput against a fast vendor. Each verdict is exactly finish_job's
-- (same lease-token check, same key transitions, same audit row); the
-- arrays are parallel, one element per job. Applied in the order of the
-- keys' (workspace, vendor), the order finish_job's activation lock and
-- key-row locks are taken in, so two sidecars' batches never deadlock on
-- each other. An error in one verdict fails the whole call (nothing is
-- written): the sidecar then records that batch's verdicts one by one.
CREATE FUNCTION byok.finish_jobs(job_ids bigint[], lease_tokens uuid[], outcomes text[],
                                 details text[] DEFAULT NULL, http_statuses integer[] DEFAULT NULL,
                                 retry_after_seconds integer[] DEFAULT NULL,
                                 vendor_accounts text[] DEFAULT NULL)
RETURNS TABLE(job_id bigint, status text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer := cardinality(finish_jobs.job_ids);
    i integer;
BEGIN
    PERFORM byok._require(finish_jobs.job_ids, 'job_ids');
    IF n > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'at most 1000 verdicts per call',
            HINT = 'Split the batch.';
    END IF;
    IF cardinality(finish_jobs.lease_tokens) IS DISTINCT FROM n
       OR cardinality(finish_jobs.outcomes) IS DISTINCT FROM n
       OR coalesce(cardinality(finish_jobs.details), n) <> n
       OR coalesce(cardinality(finish_jobs.http_statuses), n) <> n
       OR coalesce(cardinality(finish_jobs.retry_after_seconds), n) <> n
       OR coalesce(cardinality(finish_jobs.vendor_accounts), n) <> n THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'the arrays must all have one element per job',
            HINT = 'Pass job_ids, lease_tokens and outcomes (and any optional array) of equal length.';
    END IF;
    FOR i IN
        SELECT a.i FROM generate_subscripts(finish_jobs.job_ids, 1) AS a(i)
          LEFT JOIN byok.jobs j ON j.id = finish_jobs.job_ids[a.i]
          LEFT JOIN byok.keys k ON k.id = j.key_id
         ORDER BY k.workspace_id, k.vendor, k.id, a.i
    LOOP
        job_id := finish_jobs.job_ids[i];
        status := byok.finish_job(finish_jobs.job_ids[i], finish_jobs.lease_tokens[i], finish_jobs.outcomes[i],
                                  finish_jobs.details[i], finish_jobs.http_statuses[i],
                                  finish_jobs.retry_after_seconds[i], finish_jobs.vendor_accounts[i]);
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION byok.finish_jobs(bigint[], uuid[], text[], text[], integer[], integer[], text[]) IS
    'Record many validation verdicts in one call (finish_job for each); returns each job''s key status, or ''stale''';
REVOKE ALL ON FUNCTION byok.finish_jobs(bigint[], uuid[], text[], text[], integer[], integer[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION byok.finish_jobs(bigint[], uuid[], text[], text[], integer[], integer[], text[]) TO byok_worker;

-- end of section: pipeline

-- ===========================================================================
-- root of trust: byok.master_key_status() says which root of trust serves
-- which keys -- each master key version with the live keys it seals,
-- versions live keys need that the keyring lacks, and Supabase Vault's root
-- key where Vault holds keys or takes new ones -- and which one new keys go
-- to. Its result gains columns, so it is dropped and created again (nothing
-- depends on it but PL/pgSQL bodies, which look it up at run time). It now
-- counts keys, so byok.claim_jobs checks the keyring with the cheaper
-- byok._require_keyring (its definition above already calls it).
-- ===========================================================================
DROP FUNCTION byok.master_key_status();
CREATE FUNCTION byok."master_key_status"() RETURNS TABLE (
	"version" bigint,  /* Option < i64 > */
	"is_primary" bool,  /* bool */
	"source" TEXT,  /* String */
	"root_of_trust" TEXT,  /* String */
	"live_keys" bigint,  /* i64 */
	"stores_new_keys" bool  /* bool */
)
STRICT VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'master_key_status_wrapper';
REVOKE ALL ON FUNCTION byok.master_key_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION byok.master_key_status() TO byok_admin;

CREATE FUNCTION byok."_require_keyring"() RETURNS void
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'require_keyring_wrapper';
REVOKE ALL ON FUNCTION byok._require_keyring() FROM PUBLIC;

-- end of section: root of trust
