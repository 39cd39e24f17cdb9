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
