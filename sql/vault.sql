-- pg_byok Supabase Vault storage: where each key's ciphertext lives
-- (byok.keys.storage: pg_byok's envelope or a row of vault.secrets), the
-- check made before pg_byok touches Vault, the removal of a Vault secret
-- together with its key, moving keys between the storages (CALL
-- byok.migrate_storage) and how many keys each holds (byok.storage_status).
--
-- The plaintext is handled only by the Rust functions of src/vault.rs
-- (byok._store, byok._open_stored, byok._to_vault, byok._to_native); SQL
-- here sees ids and ciphertexts. The 0.2.0 upgrade script runs this same
-- text, so a fresh and an upgraded install end up alike.

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
