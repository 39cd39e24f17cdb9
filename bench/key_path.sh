#!/usr/bin/env bash
# Benchmark: the key path -- throughput and latency of the calls a product
# makes at runtime, each against a baseline doing comparable work without
# pg_byok, measured in the same run on the same cluster.
#
#   bash bench/key_path.sh [rounds] [seconds]          (defaults: 5 15)
#
# What: pgbench custom scripts, extended protocol with prepared statements
# (-M prepared), 2 clients on 2 threads (-c 2 -j 2), over loopback TCP, one
# run of `seconds` per variant per round. Variants, interleaved (rotating
# order) in every round:
#
#   use_key            SELECT byok.use_key(ws, 'anthropic'), as a login role
#                      granted byok_consumer; ws random among 10,000
#                      workspaces with one active key each
#   use_key-no-audit   byok.use_key's own definition (pg_get_functiondef)
#                      minus its audit INSERT (PERFORM byok._audit(...)),
#                      created in a bench schema: the audit's share, by difference
#   use_key-no-decrypt the same definition with byok._open(...) replaced by
#                      encode(ciphertext, 'base64'): the decryption's share
#   plain-use          baseline: a PL/pgSQL function that SELECTs the same row
#                      (same columns, same partial unique index) from a plain
#                      copy of byok.keys and INSERTs one row into a plain copy
#                      of byok.audit_log; returns the ciphertext as base64
#   add_key            SELECT byok.add_key(gen_random_uuid(), 'anthropic', key),
#                      as superuser (authorize() is true): normalise, check,
#                      seal, INSERT key + job + audit, NOTIFY
#   plain-insert       baseline: INSERT of a similar row (same columns,
#                      constraints and indexes, a ciphertext-sized bytea) into
#                      a plain copy of byok.keys
#   claim+finish       the sidecar's cycle minus the vendor call, with a
#                      queue of 1,000 ready jobs (BENCH_QUEUE) kept at that
#                      depth by re-queueing the key:
#                        SELECT job_id, key_id, lease_token FROM byok.claim_jobs('bench', 1, 60) \gset
#                        SELECT byok.finish_job(:job_id, :lease_token, 'valid');
#                        SELECT byok.revalidate_key(:key_id);
#                      (claim decrypts the key; finish activates it and
#                      audits; revalidate_key queues it again and audits);
#                      as superuser, since no role is granted both sides
#   claim+finish-deep  the same with 20,000 ready jobs (BENCH_DEEP_QUEUE): a
#                      backlog, e.g. a vendor outage or a bulk import
#   plain-queue        baseline for claim+finish: the same three statements on
#                      plain copies of byok.jobs/byok.keys/byok.audit_log,
#                      1,000 jobs: SKIP LOCKED claim UPDATE ... RETURNING the
#                      ciphertext; DELETE the job + UPDATE the key + INSERT an
#                      audit row (one statement); INSERT the job again
#
# Before each queue variant the queues are reset (same jobs, same keys,
# pending); before every run the hot tables are VACUUMed.
# One warm-up round (5 s per variant) is discarded.
#
# How to read it: per variant, median tps (min-max) over the rounds and the
# mean of pgbench's "latency average" (ms, per call or per cycle, as seen by a
# client: it includes the loopback round trip and the wait for a CPU, since
# 2 clients + 2 backends share 2 cores), and for the queue variants the mean
# per-statement latency (-r). "x baseline" is the ratio of median tps to
# the baseline's in the same run. Differences between the use_key variants
# give the audit INSERT's and the decryption's share of a use_key call.
# The server runs with fsync = off: commits cost the same for pg_byok and the
# baselines (one per call), and leaving out the disk's flush keeps the
# comparison about the work each call does.
#
# Needs pgbench (postgresql-contrib) and the installed extension's SQL files
# (CREATE EXTENSION reads them); it never installs anything. Starts its own
# throw-away cluster (as the postgres OS user when run as root), loopback
# only, with pg_byok preloaded and a 0600 keyring file owned by postgres.
# BYOK_LIB=/path/to/libpg_byok.so (e.g. target/release/libpg_byok.so from
# `cargo build --release -p pg_byok`) benchmarks that library file: it is
# copied into the cluster's directory and preloaded from there, and the
# installed extension script is run with MODULE_PATHNAME pointing at it (not
# through CREATE EXTENSION, which would load the installed pg_byok.so), so no
# backend loads the installed library; the script checks that, and that the
# installed SQL holds the repository's sql/*.sql.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-15}
nws=${BENCH_WORKSPACES:-10000}
depth=${BENCH_QUEUE:-1000}
pool=${BENCH_DEEP_QUEUE:-20000}
. bench/cluster.sh
pgbench=$(command -v pgbench || echo "$bin/pgbench")
sharedir=$("$bin/pg_config" --sharedir)/extension

bench_cluster keypath
for f in sql/*.sql; do
    python3 - "$f" "$sharedir"/pg_byok--*.sql <<'EOF' || echo "WARNING: the installed extension SQL does not hold $f as in this checkout" >&2
import sys
part = open(sys.argv[1]).read().strip()
sys.exit(0 if any(part in open(p).read() for p in sys.argv[2:]) else 1)
EOF
done

as_pg "$bin/pg_ctl" start -w -D "$dir/data" -l "$dir/server.log" >/dev/null

psql_() { as_pg "$bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres "$@"; }

if [ "$lib" = pg_byok ]; then
    psql_ -c 'CREATE EXTENSION pg_byok'
else
    # CREATE EXTENSION would load the installed '$libdir/pg_byok' (the C
    # validator of every CREATE FUNCTION loads its library), so run the
    # installed extension script itself as CREATE EXTENSION would, with
    # MODULE_PATHNAME naming the benchmarked library; only
    # pg_extension_config_dump (pg_dump bookkeeping, CREATE EXTENSION only) is
    # left out. The objects are the same, they just belong to no extension.
    # Like CREATE EXTENSION, check_function_bodies is off: a SQL function's
    # body (byok._audit's) may name a function created later in the script.
    { echo 'BEGIN; CREATE SCHEMA byok; SET LOCAL search_path = byok; SET LOCAL check_function_bodies = off;'
      sed -e "s|MODULE_PATHNAME|$lib|g" -e '/pg_extension_config_dump/d' "$sharedir/pg_byok--$(
          sed -n "s/^default_version = '\(.*\)'/\1/p" "$sharedir/pg_byok.control").sql"
      echo 'COMMIT;'
    } >"$dir/pg_byok.sql"
    chmod 644 "$dir/pg_byok.sql"
    psql_ -f "$dir/pg_byok.sql" >/dev/null
fi
# The library every backend runs is the one benchmarked, and only that one.
[ "$(psql_ -c "SELECT count(*) FROM pg_proc WHERE probin LIKE '%pg_byok%' AND probin <> '$lib'")" = 0 ] ||
    { echo "functions still point at another pg_byok library" >&2; exit 1; }
maps=$(psql_ -c "SELECT byok.mask('sk-ant-api03-xxxx')" -c "SELECT pg_read_file('/proc/self/maps')" | grep -o '/[^ ]*pg_byok[^ ]*\.so' | sort -u)
if [ "$lib" != pg_byok ] && [ "$maps" != "$lib" ]; then
    echo "backend maps [$maps], expected only $lib" >&2
    exit 1
fi

key() { echo "sk-ant-api03-$(head -c 300 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | head -c 93)AA"; }
t0=$(date +%s)
psql_ >/dev/null <<SQL
CREATE ROLE bench_consumer LOGIN IN ROLE byok_consumer;
CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO bench_consumer;
-- Workspace n of the use_key set (1..$nws) and of the queue pool.
CREATE FUNCTION bench.ws(n int) RETURNS uuid IMMUTABLE LANGUAGE sql
    AS \$\$ SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid \$\$;
CREATE FUNCTION bench.pool_ws(n int) RETURNS uuid IMMUTABLE LANGUAGE sql
    AS \$\$ SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(n), 12, '0'))::uuid \$\$;
CREATE FUNCTION bench.fake_key(n int) RETURNS text IMMUTABLE LANGUAGE sql
    AS \$\$ SELECT 'sk-ant-api03-' || left(md5(n::text) || md5('a' || n) || md5('b' || n), 93) || 'AA' \$\$;

-- $nws workspaces with one active anthropic key each: add, then validate.
SELECT count(byok.add_key(bench.ws(n), 'anthropic', bench.fake_key(n))) FROM generate_series(1, $nws) n;
DO \$\$
DECLARE r record; got int;
BEGIN
    LOOP
        got := 0;
        FOR r IN SELECT * FROM byok.claim_jobs('setup', 1000, 3600) LOOP
            PERFORM byok.finish_job(r.job_id, r.lease_token, 'valid');
            got := got + 1;
        END LOOP;
        EXIT WHEN got = 0;
    END LOOP;
END \$\$;
-- The queue pool: $pool pending keys (their jobs are reset before each run;
-- the first $depth make the shallow queue).
CREATE TABLE bench.pool AS
SELECT n, (byok.add_key(bench.pool_ws(n), 'anthropic', bench.fake_key(-n))).id AS key_id FROM generate_series(1, $pool) n;

-- Baselines: plain copies (same columns, constraints, indexes; no RLS,
-- no triggers) holding the same rows.
CREATE TABLE bench.keys_plain (LIKE byok.keys INCLUDING ALL);
INSERT INTO bench.keys_plain SELECT * FROM byok.keys WHERE status = 'active';
CREATE TABLE bench.keys_ins (LIKE byok.keys INCLUDING ALL);
CREATE TABLE bench.keys_q (LIKE byok.keys INCLUDING ALL);
INSERT INTO bench.keys_q SELECT k.* FROM byok.keys k JOIN bench.pool p ON p.key_id = k.id WHERE p.n <= $depth;
CREATE TABLE bench.jobs_plain (LIKE byok.jobs INCLUDING ALL);
CREATE TABLE bench.audit_plain (LIKE byok.audit_log INCLUDING ALL);
GRANT SELECT ON bench.keys_plain TO bench_consumer;
GRANT INSERT ON bench.audit_plain TO bench_consumer;

CREATE FUNCTION bench.plain_use(workspace_id uuid, vendor text) RETURNS text
LANGUAGE plpgsql VOLATILE AS \$\$
#variable_conflict use_column
DECLARE
    k bench.keys_plain;
BEGIN
    SELECT * INTO k FROM bench.keys_plain
     WHERE workspace_id = plain_use.workspace_id AND vendor = plain_use.vendor AND status = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no active key';
    END IF;
    INSERT INTO bench.audit_plain (actor_role, actor_sub, action, key_id, workspace_id, vendor, outcome, detail)
    VALUES (current_user, NULL, 'use', k.id, k.workspace_id, k.vendor, 'ok', NULL);
    RETURN encode(k.ciphertext, 'base64');
END
\$\$;
GRANT EXECUTE ON FUNCTION bench.plain_use(uuid, text) TO bench_consumer;

-- use_key minus one step, from its current definition (same owner, same
-- SECURITY DEFINER and search_path); fails if the step is not found as written.
CREATE SCHEMA bench_no_audit;
CREATE SCHEMA bench_no_decrypt;
GRANT USAGE ON SCHEMA bench_no_audit, bench_no_decrypt TO bench_consumer;
DO \$\$
DECLARE
    def text := pg_get_functiondef('byok.use_key(uuid, text)'::regprocedure);
    audit text := 'PERFORM byok._audit(''use'', k.id, k.workspace_id, k.vendor, ''ok'', NULL);';
    open text := 'byok._open(k.id, k.workspace_id, k.vendor, k.ciphertext)';
BEGIN
    IF strpos(def, audit) = 0 OR strpos(def, open) = 0 OR strpos(def, 'FUNCTION byok.use_key(') = 0 THEN
        RAISE EXCEPTION 'byok.use_key no longer reads as this bench expects: %', def;
    END IF;
    EXECUTE replace(replace(def, audit, 'NULL;'), 'FUNCTION byok.use_key(', 'FUNCTION bench_no_audit.use_key(');
    EXECUTE replace(replace(def, open, 'encode(k.ciphertext, ''base64'')'),
                    'FUNCTION byok.use_key(', 'FUNCTION bench_no_decrypt.use_key(');
END \$\$;
GRANT EXECUTE ON FUNCTION bench_no_audit.use_key(uuid, text), bench_no_decrypt.use_key(uuid, text) TO bench_consumer;
VACUUM ANALYZE;
SQL
echo "(setup: $nws active keys, $pool pooled keys in $(($(date +%s) - t0)) s)" >&2

# pgbench scripts. The workspace expression is the same in every use variant.
ws='bench.ws(:n::int)'
mk() { cat >"$dir/$1.sql"; chmod 644 "$dir/$1.sql"; }
mk use_key <<EOF
\set n random(1, $nws)
SELECT byok.use_key($ws, 'anthropic');
EOF
mk use_key-no-audit <<EOF
\set n random(1, $nws)
SELECT bench_no_audit.use_key($ws, 'anthropic');
EOF
mk use_key-no-decrypt <<EOF
\set n random(1, $nws)
SELECT bench_no_decrypt.use_key($ws, 'anthropic');
EOF
mk plain-use <<EOF
\set n random(1, $nws)
SELECT bench.plain_use($ws, 'anthropic');
EOF
mk add_key <<EOF
SELECT byok.add_key(gen_random_uuid(), 'anthropic', '$(key)');
EOF
ct=$(psql_ -c "SELECT ciphertext FROM byok.keys WHERE ciphertext IS NOT NULL LIMIT 1")
mk plain-insert <<EOF
INSERT INTO bench.keys_ins (id, workspace_id, vendor, label, masked, status, ciphertext) VALUES (gen_random_uuid(), gen_random_uuid(), 'anthropic', NULL, '…xxAA', 'pending', '$ct');
EOF
mk claim+finish <<'EOF'
SELECT job_id, key_id, lease_token FROM byok.claim_jobs('bench', 1, 60) \gset
SELECT byok.finish_job(:job_id, :lease_token, 'valid');
SELECT byok.revalidate_key(:key_id);
EOF
cp "$dir/claim+finish.sql" "$dir/claim+finish-deep.sql"
mk plain-queue <<'EOF'
WITH p AS (SELECT id FROM bench.jobs_plain WHERE run_after <= clock_timestamp() ORDER BY run_after, id LIMIT 1 FOR UPDATE SKIP LOCKED) UPDATE bench.jobs_plain j SET attempts = j.attempts + 1, lease_token = gen_random_uuid(), leased_by = 'bench', run_after = clock_timestamp() + interval '60 s' FROM p, bench.keys_q k WHERE j.id = p.id AND k.id = j.key_id RETURNING j.id AS job_id, j.key_id, j.lease_token, k.ciphertext \gset
WITH j AS (DELETE FROM bench.jobs_plain WHERE id = :job_id AND lease_token = :lease_token RETURNING key_id), k AS (UPDATE bench.keys_q k SET status = 'active', validated_at = clock_timestamp() FROM j WHERE k.id = j.key_id RETURNING k.id, k.workspace_id, k.vendor) INSERT INTO bench.audit_plain (actor_role, action, key_id, workspace_id, vendor, outcome, detail) SELECT current_user, 'validate', id, workspace_id, vendor, 'valid', NULL FROM k;
INSERT INTO bench.jobs_plain (key_id) VALUES (:key_id);
EOF

declare -A role=([use_key]=bench_consumer [use_key-no-audit]=bench_consumer [use_key-no-decrypt]=bench_consumer
    [plain-use]=bench_consumer [add_key]=postgres [plain-insert]=postgres
    [claim+finish]=postgres [claim+finish-deep]=postgres [plain-queue]=postgres)
variants=(use_key use_key-no-audit use_key-no-decrypt plain-use add_key plain-insert claim+finish claim+finish-deep plain-queue)

reset_queues() {  # jobs in byok.jobs
    psql_ <<SQL
DELETE FROM byok.jobs;
UPDATE byok.keys k SET status = 'pending', validated_at = NULL, status_detail = NULL
  FROM bench.pool p WHERE k.id = p.key_id AND k.status <> 'pending';
INSERT INTO byok.jobs (key_id) SELECT key_id FROM bench.pool WHERE n <= $1 ORDER BY n;
DELETE FROM bench.jobs_plain;
UPDATE bench.keys_q SET status = 'pending', validated_at = NULL WHERE status <> 'pending';
INSERT INTO bench.jobs_plain (key_id) SELECT key_id FROM bench.pool WHERE n <= $depth ORDER BY n;
SQL
}
declare -A tps lat stmt
run() {  # variant seconds record
    local v=$1 s=$2 out
    case $v in claim+finish | plain-queue) reset_queues "$depth" ;; claim+finish-deep) reset_queues "$pool" ;; esac
    psql_ -c 'VACUUM byok.jobs, byok.keys, bench.jobs_plain, bench.keys_q, bench.keys_ins'
    out=$(as_pg timeout $((s + 60)) "$pgbench" -n -h 127.0.0.1 -p "$port" -U "${role[$v]}" -M prepared \
        -c 2 -j 2 -T "$s" -r -f "$dir/$v.sql" postgres 2>"$dir/pgbench.err") ||
        { echo "pgbench $v failed:" >&2; cat "$dir/pgbench.err" >&2; echo "$out" >&2; exit 1; }
    [ "$3" = record ] || return 0
    tps[$v]+="$(echo "$out" | awk '/^tps/ {print $3}') "
    lat[$v]+="$(echo "$out" | awk '/^latency average/ {print $4}') "
    # per-statement mean latencies (ms), in script order
    stmt[$v]+="$(echo "$out" | awk '/statement latencies/ {on = 1; next} on && /^ +[0-9.]+ / {printf "%s/", $1}') "
}

for v in "${variants[@]}"; do run "$v" 5 warmup; done
for ((r = 0; r < rounds; r++)); do
    for ((i = 0; i < ${#variants[@]}; i++)); do
        run "${variants[$(((i + r) % ${#variants[@]}))]}" "$secs" record
    done
    echo "(round $((r + 1))/$rounds done, load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
minmax() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {printf "%.0f-%.0f", a[1], a[NR]}'; }
mean() { tr ' ' '\n' | grep -v '^$' | awk '{s += $1} END {printf "%.3f", s / NR}'; }
declare -A base=([use_key]=plain-use [use_key-no-audit]=plain-use [use_key-no-decrypt]=plain-use
    [add_key]=plain-insert [claim+finish]=plain-queue [claim+finish-deep]=plain-queue)
echo "## the key path: pgbench -M prepared -c 2 -j 2, $rounds rounds x $secs s per variant, interleaved"
echo
echo "| variant | tps, median (min-max) | x baseline | latency, mean of rounds (ms) | per statement (ms) |"
echo "|---|---|---|---|---|"
for v in "${variants[@]}"; do
    m=$(echo "${tps[$v]}" | median)
    ratio=-
    [ -n "${base[$v]:-}" ] && ratio=$(awk -v a="$m" -v b="$(echo "${tps[${base[$v]}]}" | median)" 'BEGIN {printf "%.2f", a / b}')
    per=-
    case $v in claim+finish* | plain-queue)
        per=$(echo "${stmt[$v]}" | tr ' ' '\n' | grep -v '^$' |
            awk -F/ '{c += $1; f += $2; q += $3} END {printf "claim %.3f, finish %.3f, re-queue %.3f", c / NR, f / NR, q / NR}') ;;
    esac
    printf '| %s | %.0f (%s) | %s | %s | %s |\n' "$v" "$m" "$(echo "${tps[$v]}" | minmax)" "$ratio" \
        "$(echo "${lat[$v]}" | mean)" "$per"
done
echo
echo "(library: $libfile; machine load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
