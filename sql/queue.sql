-- pg_byok validation queue: the sidecar's side (role byok_worker).
--
-- A job is claimable when run_after has passed; claiming counts the attempt,
-- issues a fresh lease token and pushes run_after to the lease's end, so a
-- worker that dies simply lets its lease run out. Every finish is guarded by
-- the token: a late worker whose lease was taken over changes nothing.

CREATE FUNCTION byok._check_worker_args(worker text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM byok._require(worker, 'worker');
    IF btrim(worker) = '' OR char_length(worker) > 200 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'worker must be a name of 1 to 200 characters',
            HINT = 'Pass a name that identifies the sidecar, e.g. its host name and pid.';
    END IF;
    RETURN btrim(worker);
END
$$;

-- A job claimed past the attempt limit (its worker died on the last
-- attempt, or byok.max_attempts was lowered): the key becomes unverified
-- instead of being tried again. Done at claim time, on the rows the claim
-- picked anyway, so no scan of the whole queue is needed.
CREATE FUNCTION byok._give_up(job_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j byok.jobs;
    k byok.keys;
BEGIN
    DELETE FROM byok.jobs WHERE id = job_id RETURNING * INTO j;
    UPDATE byok.keys
       SET status = 'unverified',
           status_detail = left(format('the vendor could not be reached after %s attempts%s',
                                       j.attempts - 1, coalesce(': ' || j.last_error, '')), 1000)
     WHERE id = j.key_id AND status = 'pending'
    RETURNING * INTO k;
    IF FOUND THEN
        PERFORM byok._audit('validate', k.id, k.workspace_id, k.vendor, 'unverified', k.status_detail);
    END IF;
END
$$;

CREATE FUNCTION byok.claim_jobs(worker text, max_jobs integer DEFAULT 16, lease_seconds integer DEFAULT 60)
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

-- vendor_account (0.2.0, last so that an 0.1.0 sidecar's positional call
-- with six arguments still resolves): the account the vendor named in its
-- answer, recorded on a valid verdict.
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
COMMENT ON FUNCTION byok.finish_job(bigint, uuid, text, text, integer, integer, text) IS
    'Record a validation verdict under a lease token; returns the key''s new status, or ''stale''';

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

-- Circuit breaker support: push a vendor's ready jobs back without counting
-- an attempt (the vendor is down, not the keys).
CREATE FUNCTION byok.defer_jobs(vendor text, seconds integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v text := byok._vendor(defer_jobs.vendor);
    n integer;
BEGIN
    IF defer_jobs.seconds IS NULL OR defer_jobs.seconds NOT BETWEEN 1 AND 3600 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'seconds must be between 1 and 3600',
            HINT = 'Defer by about the circuit breaker''s open interval.';
    END IF;
    UPDATE byok.jobs j
       SET run_after = clock_timestamp() + make_interval(secs => defer_jobs.seconds)
     WHERE j.id IN (SELECT r.id FROM byok.jobs r JOIN byok.keys k ON k.id = r.key_id
                     WHERE k.vendor = v AND r.run_after <= clock_timestamp()
                     FOR UPDATE OF r SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Hand a claimed job back without spending its attempt (shutdown, breaker
-- open). Returns false when the lease token is stale.
CREATE FUNCTION byok.release_job(job_id bigint, lease_token uuid, delay_seconds integer DEFAULT 0)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require(release_job.job_id, 'job_id');
    PERFORM byok._require(release_job.lease_token, 'lease_token');
    IF release_job.delay_seconds IS NULL OR release_job.delay_seconds NOT BETWEEN 0 AND 3600 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'delay_seconds must be between 0 and 3600',
            HINT = 'Pass 0 to make the job claimable again at once.';
    END IF;
    UPDATE byok.jobs
       SET attempts = greatest(attempts - 1, 0), lease_token = NULL, leased_by = NULL,
           run_after = clock_timestamp() + make_interval(secs => release_job.delay_seconds)
     WHERE id = release_job.job_id AND lease_token = release_job.lease_token;
    RETURN FOUND;
END
$$;

CREATE FUNCTION byok.report_vendor_status(worker text, vendor text, state text, detail text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    who text := byok._check_worker_args(report_vendor_status.worker);
    v text := byok._vendor(report_vendor_status.vendor);
BEGIN
    IF report_vendor_status.state IS NULL OR report_vendor_status.state NOT IN ('closed', 'open', 'half_open') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'state must be closed, open or half_open',
            HINT = 'Report the circuit breaker''s state.';
    END IF;
    INSERT INTO byok.vendor_health AS h (vendor, state, detail, reported_by, updated_at)
    VALUES (v, report_vendor_status.state, byok._clean_text(report_vendor_status.detail, 'detail', 1000),
            who, clock_timestamp())
    ON CONFLICT (vendor) DO UPDATE
        SET state = excluded.state, detail = excluded.detail, reported_by = excluded.reported_by,
            updated_at = excluded.updated_at;
END
$$;

CREATE VIEW byok.vendor_status AS
    SELECT vendor, state, state <> 'closed' AS degraded, detail, reported_by, updated_at
      FROM byok.vendor_health;
COMMENT ON VIEW byok.vendor_status IS
    'Vendor health from the sidecars'' circuit breakers: open means a vendor-side outage, not bad keys';

CREATE FUNCTION byok.queue_depth()
RETURNS TABLE(vendor text, ready bigint, leased bigint, waiting bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.vendor,
           count(*) FILTER (WHERE j.run_after <= clock_timestamp()),
           count(*) FILTER (WHERE j.run_after > clock_timestamp() AND j.lease_token IS NOT NULL),
           count(*) FILTER (WHERE j.run_after > clock_timestamp() AND j.lease_token IS NULL)
      FROM byok.jobs j JOIN byok.keys k ON k.id = j.key_id
     GROUP BY k.vendor
$$;
