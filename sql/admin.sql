-- pg_byok administration without a superuser: the byok_admin role's check,
-- and the superuser's archive of pg_byok's data.
--
-- On Supabase the only superuser is supabase_admin; the role developers'
-- migrations run as (postgres) is not one. Configuration (attach/detach,
-- grant_supabase_roles) is therefore allowed to members of byok_admin, which
-- byok._grant_supabase_roles grants to postgres where Supabase's roles
-- exist. byok_admin reads no ciphertext and no plaintext: it gets no
-- EXECUTE on use_key/claim_jobs and no SELECT on the ciphertext column
-- (grants.sql). Its privileges are granted at the end of grants.sql, since
-- they name functions created after this file.
--
-- pg_byok's tables are not extension configuration tables: pg_dump run by
-- a non-superuser would have to SELECT every column of them, the ciphertext
-- included. Their rows travel in byok.export_archive()'s output instead,
-- which only a superuser can produce (docs/SECURITY.md, "Backups").

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
