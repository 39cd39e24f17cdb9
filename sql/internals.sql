-- pg_byok internals: who is calling, the audit writer, row conversion and
-- the one revocation routine every path (user, rotation, workspace
-- lifecycle) goes through. Nothing here is granted to anyone.

-- The role the caller acts as. Inside a SECURITY DEFINER function
-- current_user is the extension's owner, so the caller is read from the
-- `role` setting (what SET [LOCAL] ROLE chose, as PostgREST does), falling
-- back to the session's login role.
-- (No SET clause here or in _jwt_sub: they are inlined into the callers,
-- which all pin search_path themselves, and every name is qualified.)
CREATE FUNCTION byok._caller() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.current_setting('role') = 'none' THEN session_user::text
                ELSE pg_catalog.current_setting('role') END
$$;

-- The caller's JWT subject, read from the settings PostgREST sets for each
-- request -- the same ones Supabase's auth.uid() reads. auth.uid() itself is
-- not called: these functions run as the extension's owner, and whoever owns
-- schema `auth` (or creates one) would get their code run with that power.
-- NULL outside an API request.
CREATE FUNCTION byok._jwt_sub() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT nullif(coalesce(nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                           nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::pg_catalog.jsonb
                               OPERATOR(pg_catalog.->>) 'sub'), '')
$$;

-- Superusers and Supabase's service_role may act on every workspace.
-- (PL/pgSQL, not SQL: a SQL function with a subquery is never inlined, and
-- would be parsed and planned again on every call; PL/pgSQL keeps its plans.)
CREATE FUNCTION byok._caller_is_trusted() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller text := byok._caller();
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = caller AND rolsuper) THEN
        RETURN true;
    END IF;
    RETURN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role')
       AND pg_has_role(caller, 'service_role', 'USAGE');
END
$$;

-- Membership (not inherited privilege): Supabase's roles are NOINHERIT, and
-- service_role is made a member of byok_consumer.
CREATE FUNCTION byok._caller_has_role(role_name text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller text := byok._caller();
BEGIN
    RETURN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = caller AND rolsuper)
        OR pg_has_role(caller, role_name, 'MEMBER');
END
$$;

-- PL/pgSQL, not SQL: an INSERT is never inlined, and a non-inlined SQL
-- function is planned again in every query that calls it, while PL/pgSQL
-- keeps its plan for the session (measured: BENCHMARKS.md, "The key path").
CREATE FUNCTION byok._audit(action text, key_id uuid, workspace_id uuid, vendor text,
                            outcome text, detail text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO byok.audit_log (actor_role, actor_sub, action, key_id, workspace_id, vendor, outcome, detail)
    VALUES (byok._caller(), byok._jwt_sub(), $1, $2, $3, $4, $5, left(byok.redact($6), 1000));
END
$$;

-- No SET clause: inlined into its callers (add_key returns it on every call).
CREATE FUNCTION byok._info(k byok.keys) RETURNS byok.key_info
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(k.id, k.workspace_id, k.vendor, k.label, k.masked, k.status, k.status_detail,
               k.created_at, k.validated_at, k.revoked_at, k.vendor_account)::byok.key_info
$$;

-- 22004 with the argument's name when a required argument is NULL.
CREATE FUNCTION byok._require(value anyelement, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = format('%s must not be NULL', what),
            HINT = format('Pass a non-NULL %s.', what);
    END IF;
END
$$;

-- Free text from callers (labels, reasons, details): trimmed, key-shaped
-- runs masked, length bounded. Returns NULL for blank input.
CREATE FUNCTION byok._clean_text(value text, what text, max_len integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cleaned text := nullif(btrim(value, E' \t\r\n'), '');
BEGIN
    IF cleaned IS NOT NULL AND char_length(cleaned) > max_len THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('%s is %s characters long; at most %s are allowed', what, char_length(cleaned), max_len),
            HINT = format('Shorten the %s.', what);
    END IF;
    RETURN byok.redact(cleaned);
END
$$;

CREATE FUNCTION byok._deny_workspace(workspace_id uuid) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('permission denied for workspace %s', workspace_id),
        HINT = 'Sign in as a member of this workspace (see byok.attach_members), or call as service_role.';
END
$$;

-- The key a caller names, locked; 42501 for a key the caller may not touch
-- and, to non-trusted callers, for a key that does not exist, so that key
-- ids reveal nothing about other workspaces.
CREATE FUNCTION byok._key_for_caller(key_id uuid) RETURNS byok.keys
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k byok.keys;
BEGIN
    PERFORM byok._require(key_id, 'key_id');
    -- Authorize before locking: a stranger must not be able to hold a lock
    -- on another tenant's key (nor time one to learn it exists).
    SELECT * INTO k FROM byok.keys WHERE id = key_id;
    IF FOUND AND byok.authorize(k.workspace_id) THEN
        SELECT * INTO k FROM byok.keys WHERE id = key_id FOR UPDATE;
        IF FOUND THEN
            RETURN k;
        END IF;
    END IF;
    IF NOT FOUND AND byok._caller_is_trusted() THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('no key with id %s', key_id),
            HINT = 'List a workspace''s keys with byok.list_keys(workspace_id).';
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = format('permission denied for key %s', key_id),
        HINT = 'Sign in as a member of the key''s workspace, or call as service_role.';
END
$$;

-- Revoke keys by id and/or by workspace: status, erased ciphertext, one
-- audit row per key, then cancelled jobs, all in the caller's transaction.
-- Already dead keys are left as they are. Returns the count.
CREATE FUNCTION byok._revoke(key_ids uuid[], workspace_ids uuid[], reason text, cause text)
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

-- A text id column's value as a uuid, or NULL when it holds something else
-- (an app's unrelated ids must never make its own DELETE fail: every string
-- the pattern accepts -- braces only in pairs, blanks only around -- is
-- valid uuid input once trimmed). The same rule as byok_core::app_sql.
-- (No SET clause, every name qualified: inlined into authorize, which runs
-- it on the JWT subject of every member's call.)
CREATE FUNCTION byok._as_uuid(value text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value OPERATOR(pg_catalog.~*) '^\s*(\{[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}|[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})\s*$'
                THEN pg_catalog.btrim(value, E' \t\n\r\f\x0B')::pg_catalog.uuid END
$$;
