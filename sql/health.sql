-- pg_byok key health: keys that stop working.
--
-- An app reports a vendor's 401/403 (byok.report_key_failure), the sidecar
-- re-checks active keys on a schedule (byok.enqueue_due_revalidations), a
-- key's status changes are announced on NOTIFY channel byok_key_events, and
-- byok.key_health tells a workspace when its keys were last checked and used.
-- A report or a schedule only queues a validation: what demotes a key is the
-- vendor's own answer to the sidecar (finish_job), never a report alone.
-- Runs after api.sql and queue.sql; grants for what it adds are at its end
-- (grants.sql runs later still and only revokes PUBLIC's defaults).

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

-- byok.jobs is UNLOGGED (bootstrap.sql): a crash or a replica's promotion
-- empties it, and byok.queue_intact with it. The queue is derived state --
-- a key awaits validation exactly while it is pending -- so it is rebuilt
-- from the keys: every pending key without a job gets one (its attempt
-- count starts again). Runs on the sidecar's revalidation timer (below);
-- byok.revalidate_key queues one key at once. Returns how many it queued.
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

-- Scheduled revalidation: the sidecar calls this on a timer. Active keys
-- whose last check (or activation) is older than byok.revalidate_interval
-- get a job, oldest first; a key with a job already queued is left alone.
-- First, a queue lost to a crash is rebuilt (byok._rebuild_lost_queue).
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
COMMENT ON FUNCTION byok.key_health(uuid) IS
    'A workspace''s live keys: last check and its outcome, next check due, last use, idle';

GRANT EXECUTE ON FUNCTION byok.report_key_failure(uuid, text, integer, text) TO byok_consumer;
GRANT EXECUTE ON FUNCTION byok.enqueue_due_revalidations(integer) TO byok_worker;
