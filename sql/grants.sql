-- pg_byok privileges: runs last in CREATE EXTENSION.
--
-- Nothing is granted to PUBLIC. byok_worker gets the queue, byok_consumer
-- gets use_key, Supabase's roles get exactly what API.md lists (now if they
-- exist, or later through byok.grant_supabase_roles()). The ciphertext
-- column of byok.keys is granted to no role at all.
--
-- Members (authenticated) read keys through byok.list_keys only, not from
-- byok.keys: row-level security filters rows after the scan has read them,
-- so EXPLAIN ANALYZE of a query on the table counts another workspace's rows
-- ("Rows Removed by Filter"), and conditions on indexed columns tell which
-- vendors, statuses and creation times they have. service_role, for whom
-- every workspace is authorized anyway, keeps its column SELECT.

DO $revoke$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = 'byok'::regnamespace LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);  -- ROUTINE: procedures too
    END LOOP;
END
$revoke$;
REVOKE ALL ON ALL TABLES IN SCHEMA byok FROM PUBLIC;
REVOKE ALL ON SCHEMA byok FROM PUBLIC;

GRANT USAGE ON SCHEMA byok TO byok_worker, byok_consumer;
GRANT EXECUTE ON FUNCTION
    byok.claim_jobs(text, integer, integer),
    byok.finish_job(bigint, uuid, text, text, integer, integer, text),
    byok.release_job(bigint, uuid, integer),
    byok.defer_jobs(text, integer),
    byok.report_vendor_status(text, text, text, text),
    byok.queue_depth()
  TO byok_worker;
GRANT SELECT ON byok.vendor_status TO byok_worker, byok_consumer;
GRANT EXECUTE ON FUNCTION byok.use_key(uuid, text) TO byok_consumer;

-- The grants themselves, unchecked: CREATE EXTENSION calls this directly,
-- since under supautils it runs as the superuser on postgres's behalf (the
-- caller check would see postgres, not yet a member of byok_admin).
CREATE FUNCTION byok._grant_supabase_roles() RETURNS text[]
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

CREATE FUNCTION byok.grant_supabase_roles() RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM byok._require_admin('grant pg_byok to Supabase''s roles');
    RETURN byok._grant_supabase_roles();
END
$$;
REVOKE ALL ON FUNCTION byok._grant_supabase_roles() FROM PUBLIC;
REVOKE ALL ON FUNCTION byok.grant_supabase_roles() FROM PUBLIC;
COMMENT ON FUNCTION byok.grant_supabase_roles() IS
    'Grant anon/authenticated/service_role exactly what pg_byok allows them; run after creating those roles';

-- byok_admin: configuration and health, never a key. The trigger
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
    byok.attachment_problems(),
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
