-- pg_byok upgrade 0.1.0 → 0.2.0, run by `ALTER EXTENSION pg_byok UPDATE TO '0.2.0'`.
--
-- Hand-written: tables are altered in place, never dropped and re-created,
-- and data migrations run here, so an installed database keeps every key.
-- Functions are replaced. After this script, the catalog must equal that of
-- a fresh CREATE EXTENSION at 0.2.0 (the upgrade test compares them).
--
-- Sections, in order: the security fixes, then the release's own changes.
\echo Use "ALTER EXTENSION pg_byok UPDATE TO '0.2.0'" to load this file. \quit

-- supabase: admin role, dumps, audit for members
--
-- Configuration by byok_admin instead of a superuser (Supabase's postgres
-- is none), pg_byok's tables out of pg_dump's configuration set (a
-- non-superuser's pg_dump would need the ciphertext column; the superuser's
-- byok.export_archive() carries the rows instead), and SELECT on the audit
-- trail for authenticated (RLS limits it to the caller's workspaces).

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

DROP FUNCTION byok._require_superuser(text);

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
BEGIN
    PERFORM byok._require_admin('attach a workspace table');
    PERFORM byok._require(attach_workspaces.workspace_table, 'workspace_table');
    PERFORM byok._require_table_privilege(attach_workspaces.workspace_table, 'TRIGGER');
    PERFORM byok._uuid_column_type(attach_workspaces.workspace_table, attach_workspaces.id_column, 'id_column');
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
    PERFORM byok._drop_workspace_triggers(attach_workspaces.workspace_table);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_delete AFTER DELETE ON %s
                    REFERENCING OLD TABLE AS byok_old_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)',
                   attach_workspaces.workspace_table, attach_workspaces.id_column);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_truncate BEFORE TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)',
                   attach_workspaces.workspace_table, attach_workspaces.id_column);
    -- Transition tables cannot be combined with UPDATE OF <column>, so the
    -- trigger fires on every UPDATE and compares old and new rows itself.
    EXECUTE format('CREATE TRIGGER byok_revoke_on_update AFTER UPDATE ON %s
                    REFERENCING OLD TABLE AS byok_old_rows NEW TABLE AS byok_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_update(%L, %L)',
                   attach_workspaces.workspace_table, attach_workspaces.id_column,
                   coalesce(attach_workspaces.status_column, ''));
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
    PERFORM byok._drop_workspace_triggers(detach_workspaces.workspace_table);
    DELETE FROM byok.workspace_source WHERE workspace_table = detach_workspaces.workspace_table;
END
$$;

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
        EXECUTE format('GRANT SELECT %s ON byok.keys TO authenticated', key_columns);
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

-- byok_admin: configuration and health, never a key. The two trigger
-- functions are granted so that a dump restored by the database owner can
-- re-create the workspace triggers (a trigger function cannot be called
-- directly). SELECT on byok.keys leaves out the ciphertext column.
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
    byok._on_workspace_update()
  TO byok_admin;
GRANT SELECT ON byok.vendor_status, byok.audit_log, byok.member_source, byok.workspace_source TO byok_admin;
GRANT SELECT (id, workspace_id, vendor, label, masked, status, status_detail, created_at, validated_at,
              revoked_at, revoked_cause) ON byok.keys TO byok_admin;

SELECT byok._grant_supabase_roles();
