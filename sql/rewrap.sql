-- pg_byok master key rotation: which master key version protects how many
-- keys (byok.key_versions), and moving keys to the primary version
-- (CALL byok.rewrap), a batch per transaction.
--
-- Opening and re-sealing happen inside the Rust function byok._rewrap;
-- only ciphertexts pass through SQL. Superusers only: nothing here is
-- granted to any role (grants.sql revokes PUBLIC's EXECUTE).

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
