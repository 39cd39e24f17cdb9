-- pg_byok public API: add, list, revoke and revalidate keys (use_key: below).
--
-- Every function is SECURITY DEFINER with a pinned search_path, checks its
-- arguments (22004 for NULL, 22023 for bad values) and byok.authorize before
-- touching a row (42501). The plaintext key is handled only by the Rust
-- functions byok._store and byok._open_stored (src/vault.rs: pg_byok's
-- envelope or Supabase Vault); it never reaches a table.

CREATE FUNCTION byok.add_key(workspace_id uuid, vendor text, api_key text, label text DEFAULT NULL)
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
COMMENT ON FUNCTION byok.add_key(uuid, text, text, text) IS
    'Store a vendor key for a workspace (encrypted), queue its validation; returns the masked key_info';

CREATE FUNCTION byok.list_keys(workspace_id uuid) RETURNS SETOF byok.key_info
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require(list_keys.workspace_id, 'workspace_id');
    IF NOT byok.authorize(list_keys.workspace_id) THEN
        PERFORM byok._deny_workspace(list_keys.workspace_id);
    END IF;
    RETURN QUERY
        SELECT (byok._info(k)).* FROM byok.keys k
         WHERE k.workspace_id = list_keys.workspace_id
         ORDER BY k.created_at DESC, k.id;
END
$$;
COMMENT ON FUNCTION byok.list_keys(uuid) IS 'A workspace''s keys, newest first, masked';

CREATE FUNCTION byok.revoke_key(key_id uuid, reason text DEFAULT 'revoked by user')
RETURNS byok.key_info
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    k byok.keys;
    clean_reason text;
BEGIN
    PERFORM byok._require(revoke_key.reason, 'reason');
    k := byok._key_for_caller(revoke_key.key_id);
    clean_reason := coalesce(byok._clean_text(revoke_key.reason, 'reason', 500), 'revoked by user');
    PERFORM byok._revoke(ARRAY[k.id], NULL, clean_reason, 'user');
    SELECT * INTO k FROM byok.keys WHERE id = k.id;
    RETURN byok._info(k);
END
$$;
COMMENT ON FUNCTION byok.revoke_key(uuid, text) IS
    'Revoke a key now (its ciphertext is erased); revoking a dead key changes nothing';

CREATE FUNCTION byok.revoke_workspace(workspace_id uuid, reason text DEFAULT 'workspace revoked')
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require(revoke_workspace.workspace_id, 'workspace_id');
    PERFORM byok._require(revoke_workspace.reason, 'reason');
    IF NOT byok.authorize(revoke_workspace.workspace_id) THEN
        PERFORM byok._deny_workspace(revoke_workspace.workspace_id);
    END IF;
    RETURN byok._revoke(NULL, ARRAY[revoke_workspace.workspace_id],
        coalesce(byok._clean_text(revoke_workspace.reason, 'reason', 500), 'workspace revoked'),
        'user');
END
$$;
COMMENT ON FUNCTION byok.revoke_workspace(uuid, text) IS
    'Revoke every live key of a workspace; returns how many were revoked';

CREATE FUNCTION byok.revalidate_key(key_id uuid) RETURNS byok.key_info
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    k byok.keys;
BEGIN
    k := byok._key_for_caller(revalidate_key.key_id);
    IF k.status IN ('revoked', 'invalid') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('key %s is %s and can no longer be validated', k.masked, k.status),
            HINT = 'Its ciphertext was erased; add the key again with byok.add_key.';
    END IF;
    -- An active key keeps serving while it is re-checked; an unverified one
    -- goes back to pending.
    IF k.status = 'unverified' THEN
        UPDATE byok.keys SET status = 'pending', status_detail = NULL WHERE id = k.id RETURNING * INTO k;
    END IF;
    -- A queued job is brought forward but keeps its attempt count, so
    -- revalidating cannot retry a key forever; a job under a live lease is
    -- left alone: its worker will finish it.
    INSERT INTO byok.jobs (key_id) VALUES (k.id)
    ON CONFLICT (key_id) DO UPDATE
        SET run_after = clock_timestamp(), lease_token = NULL, leased_by = NULL
        WHERE byok.jobs.lease_token IS NULL OR byok.jobs.run_after <= clock_timestamp();
    PERFORM pg_notify('byok_jobs', '');
    PERFORM byok._audit('revalidate', k.id, k.workspace_id, k.vendor, k.status, NULL);
    RETURN byok._info(k);
END
$$;
COMMENT ON FUNCTION byok.revalidate_key(uuid) IS 'Queue a fresh validation of a pending, active or unverified key';

-- byok.use_key is Rust (src/use_key.rs: the hot path, no PERFORM per check
-- and no write per call); its record of uses is sql/usage.sql.
