#!/usr/bin/env bash
# The side-by-side benchmark (issue 11): pg_byok against what a user would
# otherwise use -- Supabase Vault (where installed), pgcrypto and plain
# tables -- on ONE PostgreSQL 15 cluster, in one run, plus the validation
# pipeline against graphile-worker. Writes its own report; results are never
# edited by hand.
#
#   bash bench/run.sh [--quick] [--installed] [--perf] [--out DIR]
#
#   --quick      CI smoke test: 1k stored keys only, one 3 s run per variant,
#                small WAL and pipeline samples; writes DIR (default
#                /tmp/byok-bench-quick) and leaves BENCHMARKS.md alone
#   (default)    full: 1k and 100k stored keys, 2 runs of 15 s per variant,
#                interleaved; writes bench/results/ and BENCHMARKS.md's
#                generated section (between its bench:run.sh markers)
#   --installed  benchmark the pg_byok installed in the system's PostgreSQL
#                (scripts/install-extension.sh) instead of building a release
#                package of this checkout (`cargo pgrx package`)
#   --perf       also record one backend running add_key on the PostgREST path
#                with perf (`perf record -g -p`): the report's perf table
#
# The cluster (initdb'd as the postgres OS user under a private copy of the
# PostgreSQL 15 install root, so this checkout's pg_byok is what CREATE
# EXTENSION finds without touching the system's install): unix socket only,
# fsync on, defaults otherwise, except that checkpoints are kept out of the
# runs (max_wal_size 8GB, checkpoint_timeout 1h) and pg_byok, pg_stat_statements
# (track = none except in the profiling step) and supabase_vault (where its
# library is installed) are preloaded.
#
# What it measures (pgbench -M prepared, 2 clients, 2 threads, unix socket;
# every variant with synchronous_commit on and off, via PGOPTIONS):
#   read a key   byok.use_key(ws, 'anthropic') as a byok_consumer login role
#                | the same on keys pg_byok stored in Supabase Vault
#                (byok.storage = 'vault' while seeding them, workspaces
#                10000001..; where Vault is installed)
#                | vault.decrypted_secrets by id (the id from a mapping
#                table in the same statement) | pgp_sym_decrypt from a
#                pgcrypto mapping table | a plain SELECT
#   store a key  byok.add_key as superuser | byok.add_key on the PostgREST
#                path (authenticator login, BEGIN; set_config role
#                authenticated + request.jwt.claims sub; add_key to a
#                workspace the sub is a member of in the attached members
#                table; COMMIT) | vault.create_secret | pgp_sym_encrypt
#                INSERT | a plain INSERT
#   at 1k and 100k stored keys (quick: 1k). Before a level's runs each read
#   variant reads every stored key once (one statement each, timed: the
#   report's "first use" table) and the usage worker's flush of those uses
#   is waited for, so the runs measure the steady state. Rows the store
#   variants add are deleted again (and the tables VACUUMed) before the next
#   level.
#   WAL per stored key: pg_current_wal_lsn() difference over N single-client
#   adds (plus pg_stat_wal's records and full-page images), per system, with
#   autovacuum off for that step (its WAL would count too);
#   and the records of one add, from pg_waldump, by relation.
#   Where add_key's time goes: pg_stat_statements (track = all) over N adds
#   on the PostgREST path: every statement inside, mean time and calls.
#   The validation pipeline: bench/pipeline.rs (the sidecar side, when this
#   checkout has it) and graphile-worker (npm, installed once into
#   /var/cache/pg_byok/bench-npm) doing the same job -- read the key, GET
#   /v1/models on the repository's mock vendor (byok-mock-vendor) on
#   loopback, mark the key active -- for the same number of jobs, at 0 ms and
#   150 ms vendor latency; graphile-worker on this cluster once it is
#   VACUUMed and checkpointed, the sidecars on their own with this cluster
#   stopped. Absent tools are reported as skipped, never faked.
#
# Needs: pgbench, pg_waldump, python3 (the report and its SVG plots:
# bench/report.py), cargo (for the build, the mock vendor), Node/npm for
# graphile-worker. Run as root (the cluster runs as postgres) or as postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

quick=0 installed=0 perf=0 out=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --installed) installed=1 ;;
        --perf) perf=1 ;;
        --out) out=$2; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    secs=${BENCH_SECONDS:-3} runs=${BENCH_RUNS:-1} levels=(1000) wal_n=300 pipe_jobs=500
    out=${out:-${TMPDIR:-/tmp}/byok-bench-quick}
else
    secs=${BENCH_SECONDS:-15} runs=${BENCH_RUNS:-2} levels=(1000 100000) wal_n=2000 pipe_jobs=5000
    out=${out:-bench/results}
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
raw=$out/raw.tsv
: >"$raw"
started=$(date +%s)
log() { printf '[bench %4ss] %s\n' "$(($(date +%s) - started))" "$*" >&2; }
rec() { (IFS=$'\t'; echo "$*") >>"$raw"; }

sysbin=/usr/lib/postgresql/15/bin
pgbench=$(command -v pgbench || echo "$sysbin/pgbench")
pg_waldump=$sysbin/pg_waldump
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# ---------------------------------------------------------------- the build
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
sys_lib=$("$sysbin/pg_config" --pkglibdir)
sys_share=$("$sysbin/pg_config" --sharedir)
if [ "$installed" = 1 ]; then
    pkg_lib=$sys_lib pkg_ext=$sys_share/extension
    [ -f "$pkg_lib/pg_byok.so" ] || { echo "no installed pg_byok (bash scripts/install-extension.sh)" >&2; exit 1; }
else
    log "building this checkout's release package (cargo pgrx package)"
    cargo pgrx package --pg-config "$sysbin/pg_config" >&2
    pkg=$CARGO_TARGET_DIR/release/pg_byok-pg15
    pkg_lib=$pkg$sys_lib pkg_ext=$pkg$sys_share/extension
fi
if file -L "$pkg_lib/pg_byok.so" | grep -q 'with debug_info'; then
    log "WARNING: $pkg_lib/pg_byok.so is a debug build: its figures mean little"
    rec meta build debug
else
    rec meta build release
fi
if [ -n "${BENCH_MOCK_BIN:-}" ]; then
    mock_bin=$BENCH_MOCK_BIN
else
    cargo build --release -q -p byok-mock-vendor >&2
    mock_bin=$CARGO_TARGET_DIR/release/byok-mock-vendor
fi

# ------------------------------------------- private install root, cluster
dir=$(mktemp -d /tmp/byok-bench-run.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" -eq 0 ] && chown postgres "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    as_pg "$bin/pg_ctl" stop -m immediate -D "$dir/data" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
# Debian's server binaries find share/ and lib/ relative to themselves: a
# copy under <root>/usr/lib/postgresql/15/bin uses <root>'s directories,
# which link to the system's except for pg_byok's files (integration/src/pgroot.rs).
root=$dir/root
bin=$root$sysbin
mkdir -p "$bin" "$root$sys_lib" "$root$sys_share/extension"
for p in postgres initdb pg_ctl pg_config; do cp "$sysbin/$p" "$bin/"; done
for f in "$sys_lib"/*; do case ${f##*/} in pg_byok*) ;; *) ln -s "$f" "$root$sys_lib/" ;; esac; done
for f in "$sys_share"/*; do [ "${f##*/}" = extension ] || ln -s "$f" "$root$sys_share/"; done
for f in "$sys_share"/extension/*; do case ${f##*/} in pg_byok*) ;; *) ln -s "$f" "$root$sys_share/extension/" ;; esac; done
cp "$pkg_lib/pg_byok.so" "$root$sys_lib/"
cp "$pkg_ext"/pg_byok.control "$pkg_ext"/pg_byok--*.sql "$root$sys_share/extension/"
[ "$("$bin/pg_config" --sharedir)" = "$root$sys_share" ] || { echo "the private root does not relocate" >&2; exit 1; }

vault=0
if ls "$sys_share"/extension/supabase_vault*.control >/dev/null 2>&1; then vault=1; fi
preload="pg_byok, pg_stat_statements"
[ "$vault" = 1 ] && [ -f "$sys_lib/supabase_vault.so" ] && preload="$preload, supabase_vault"
rec meta vault "$([ "$vault" = 1 ] && sed -n "s/^default_version = '\(.*\)'/\1/p" "$sys_share"/extension/supabase_vault.control || echo 'not installed')"

as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
as_pg sh -c "umask 077; printf '1 %s\n' $(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') > '$dir/keyring'"
if [[ $preload == *supabase_vault* ]]; then
    # Vault reads its root key at server start from the output of a script.
    as_pg sh -c "umask 077; printf '#!/bin/sh\necho %s\n' $(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') > '$dir/vault-getkey'; chmod 700 '$dir/vault-getkey'"
    echo "vault.getkey_script = '$dir/vault-getkey'" >>"$dir/data/postgresql.conf"
fi
cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$dir'
shared_preload_libraries = '$preload'
byok.master_key_file = '$dir/keyring'
pg_stat_statements.track = none
pg_stat_statements.track_utility = off
max_wal_size = 8GB
checkpoint_timeout = 1h
logging_collector = off
CONF
as_pg "$bin/pg_ctl" start -w -D "$dir/data" -l "$dir/server.log" >/dev/null ||
    { tail -20 "$dir/server.log" >&2; exit 1; }
psql_() { as_pg "$sysbin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$dir" -U postgres -d postgres "$@"; }
rec meta postgres "$(psql_ -c 'SHOW server_version')"
rec meta pg_byok_commit "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src sql core || echo '+changes')"
rec meta mode "$([ "$quick" = 1 ] && echo quick || echo full)"
rec meta seconds "$secs"
rec meta runs "$runs"
rec meta cpus "$(nproc)"
rec meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------ schema
log "cluster up (vault: $([ "$vault" = 1 ] && echo installed || echo 'not installed')); creating the schemas"
psql_ >/dev/null <<'SQL'
-- Supabase's API roles, as PostgREST uses them (integration/src/supabase.rs).
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
CREATE EXTENSION pg_byok;
CREATE EXTENSION pgcrypto;
CREATE EXTENSION pg_stat_statements;
CREATE ROLE bench_consumer LOGIN IN ROLE byok_consumer;
CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO PUBLIC;
-- Workspace n; the JWT subject of the PostgREST path, a member of every one.
CREATE FUNCTION bench.ws(n int) RETURNS uuid IMMUTABLE LANGUAGE sql
    AS $$ SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid $$;
CREATE FUNCTION bench.fake_key(n int) RETURNS text IMMUTABLE LANGUAGE sql
    AS $$ SELECT 'sk-ant-api03-' || left(md5(n::text) || md5('a' || n) || md5('b' || n), 93) || 'AA' $$;
GRANT EXECUTE ON FUNCTION bench.ws(int) TO PUBLIC;
CREATE SCHEMA app;
CREATE TABLE app.members (workspace_id uuid, user_id uuid, PRIMARY KEY (workspace_id, user_id));
SELECT byok.attach_members('app.members', 'workspace_id', 'user_id');
-- The alternatives, keyed the way pg_byok is: (workspace, vendor) -> key.
CREATE TABLE bench.vault_map (workspace_id uuid, vendor text, secret_id uuid NOT NULL, seed boolean NOT NULL DEFAULT false,
    PRIMARY KEY (workspace_id, vendor));
CREATE TABLE bench.pgc_keys (workspace_id uuid, vendor text, secret bytea NOT NULL, seed boolean NOT NULL DEFAULT false,
    PRIMARY KEY (workspace_id, vendor));
CREATE TABLE bench.plain_keys (workspace_id uuid, vendor text, api_key text NOT NULL, seed boolean NOT NULL DEFAULT false,
    PRIMARY KEY (workspace_id, vendor));
CREATE TABLE bench.byok_seed (key_id uuid PRIMARY KEY);
SQL
[ "$vault" = 1 ] && psql_ -c 'CREATE EXTENSION supabase_vault CASCADE' >/dev/null
member=11111111-1111-4111-8111-111111111111

# Grow every system to `n` stored keys (workspaces 1..n; pg_byok's
# vault-stored keys in workspaces vault_ws+1..vault_ws+n), and drop what the
# store variants added.
vault_ws=10000000
seeded=0
seed_to() {
    local n=$1 from=$((seeded + 1))
    log "stored keys: $seeded -> $n per system"
    psql_ >/dev/null <<SQL
DELETE FROM byok.keys k WHERE NOT EXISTS (SELECT 1 FROM bench.byok_seed s WHERE s.key_id = k.id);
DELETE FROM bench.pgc_keys WHERE NOT seed;
DELETE FROM bench.plain_keys WHERE NOT seed;
INSERT INTO app.members SELECT bench.ws(n), '$member' FROM generate_series($from, $n) n;
-- Seeded keys are made active directly (the bench's own shortcut: the
-- validation pipeline is measured on its own below).
INSERT INTO bench.byok_seed
SELECT (byok.add_key(bench.ws(n), 'anthropic', bench.fake_key(n))).id FROM generate_series($from, $n) n;
DELETE FROM byok.jobs;
UPDATE byok.keys SET status = 'active', validated_at = clock_timestamp() WHERE status = 'pending';
INSERT INTO bench.pgc_keys SELECT bench.ws(n), 'anthropic', pgp_sym_encrypt(bench.fake_key(n), 'bench passphrase'), true
  FROM generate_series($from, $n) n;
INSERT INTO bench.plain_keys SELECT bench.ws(n), 'anthropic', bench.fake_key(n), true FROM generate_series($from, $n) n;
SQL
    if [ "$vault" = 1 ]; then
        psql_ >/dev/null <<SQL
-- pg_byok's own secrets (named byok/...: its vault-stored keys and its
-- root-key check) are not the store variants' rows.
DELETE FROM vault.secrets s WHERE NOT EXISTS (SELECT 1 FROM bench.vault_map m WHERE m.secret_id = s.id)
  AND coalesce(s.name, '') NOT LIKE 'byok/%';
INSERT INTO bench.vault_map SELECT bench.ws(n), 'anthropic', vault.create_secret(bench.fake_key(n)), true
  FROM generate_series($from, $n) n;
-- The same count of keys stored by pg_byok in Vault, made active the way
-- the native ones are above.
SET byok.storage = 'vault';
INSERT INTO bench.byok_seed
SELECT (byok.add_key(bench.ws($vault_ws + n), 'anthropic', bench.fake_key($vault_ws + n))).id
  FROM generate_series($from, $n) n;
DELETE FROM byok.jobs;
UPDATE byok.keys SET status = 'active', validated_at = clock_timestamp() WHERE status = 'pending';
SQL
        # Each system holds what it should: n live keys in Vault for pg_byok.
        [ "$(psql_ -c "SELECT count(*) FROM byok.keys WHERE storage = 'vault' AND status = 'active'
            AND workspace_id IN (SELECT bench.ws($vault_ws + n) FROM generate_series(1, $n) n)")" = "$n" ] ||
            { echo "seeding pg_byok's vault-stored keys did not give $n active keys" >&2; exit 1; }
    fi
    psql_ -c 'VACUUM ANALYZE' >/dev/null
    seeded=$n
}

# ---------------------------------------------------------- pgbench scripts
mk() { cat >"$dir/$1.sql"; chmod 644 "$dir/$1.sql"; }
key() { echo "sk-ant-api03-$(head -c 300 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | head -c 93)AA"; }
k=$(key)
mk read-byok <<'EOF'
\set n random(1, :keys)
SELECT byok.use_key(bench.ws(:n), 'anthropic');
EOF
mk read-byok-vault <<EOF
\set n random($((vault_ws + 1)), $vault_ws + :keys)
SELECT byok.use_key(bench.ws(:n), 'anthropic');
EOF
mk read-vault <<'EOF'
\set n random(1, :keys)
SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id = (SELECT secret_id FROM bench.vault_map WHERE workspace_id = bench.ws(:n) AND vendor = 'anthropic');
EOF
mk read-pgcrypto <<'EOF'
\set n random(1, :keys)
SELECT pgp_sym_decrypt(secret, 'bench passphrase') FROM bench.pgc_keys WHERE workspace_id = bench.ws(:n) AND vendor = 'anthropic';
EOF
mk read-plain <<'EOF'
\set n random(1, :keys)
SELECT api_key FROM bench.plain_keys WHERE workspace_id = bench.ws(:n) AND vendor = 'anthropic';
EOF
mk store-byok-superuser <<EOF
SELECT byok.add_key(gen_random_uuid(), 'anthropic', '$k');
EOF
# What PostgREST sends for an RPC call: the request's settings in one
# statement, the call, in one transaction.
mk store-byok-postgrest <<EOF
\set n random(1, :keys)
BEGIN;
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{"sub":"$member","role":"authenticated"}', true);
SELECT byok.add_key(bench.ws(:n), 'anthropic', '$k');
COMMIT;
EOF
mk store-vault <<EOF
SELECT vault.create_secret('$k');
EOF
mk store-pgcrypto <<EOF
INSERT INTO bench.pgc_keys (workspace_id, vendor, secret) VALUES (gen_random_uuid(), 'anthropic', pgp_sym_encrypt('$k', 'bench passphrase'));
EOF
mk store-plain <<EOF
INSERT INTO bench.plain_keys (workspace_id, vendor, api_key) VALUES (gen_random_uuid(), 'anthropic', '$k');
EOF
declare -A login=([read-byok]=bench_consumer [read-byok-vault]=bench_consumer [store-byok-postgrest]=authenticator)
# *-vault variants run only where supabase_vault is installed.
variants=(read-byok read-byok-vault read-vault read-pgcrypto read-plain
    store-byok-superuser store-byok-postgrest store-vault store-pgcrypto store-plain)

pgb() {  # variant sync seconds|-t N [clients] -> pgbench output
    local v=$1 sync=$2 len=$3 clients=${4:-2}
    as_pg env PGOPTIONS="-c synchronous_commit=$sync" timeout $((secs + 120)) "$pgbench" -n -h "$dir" \
        -U "${login[$v]:-postgres}" -M prepared -c "$clients" -j "$clients" $len -D keys="$seeded" \
        -f "$dir/$v.sql" postgres 2>"$dir/pgbench.err" ||
        { echo "pgbench $v failed:" >&2; cat "$dir/pgbench.err" >&2; return 1; }
}

# Wait until the usage worker has flushed every use counter (a flushed
# counter frees its slot), for at most 2 minutes; $1 says what a late flush
# would spoil.
wait_usage_flushed() {
    local tries=0
    until [ "$(psql_ -c "SELECT coalesce(bool_and(slots_used = 0), true) FROM byok.usage_status()")" = t ]; do
        tries=$((tries + 1))
        [ "$tries" -le 240 ] || { log "WARNING: no usage flush within 2 min; $1"; break; }
        sleep 0.5
    done
}

# Before a level's runs, every stored key is read once by each read variant,
# one statement each (timed: the "first use" table), and the usage worker's
# flush of those uses is waited for. The runs then measure the steady state
# the issue asks about (costs flat from 1k to 100k keys): with 100k keys a
# 15 s run would otherwise be mostly each key's first use in the hour, which
# pg_byok records with a row write (byok.key_usage) and Vault not at all.
declare -A first_use=(
    [read-byok]="SELECT count(byok.use_key(bench.ws(n), 'anthropic')) FROM generate_series(1, KEYS) n"
    [read-byok-vault]="SELECT count(byok.use_key(bench.ws($vault_ws + n), 'anthropic')) FROM generate_series(1, KEYS) n"
    [read-vault]="SELECT count((SELECT decrypted_secret FROM vault.decrypted_secrets WHERE id = (SELECT secret_id FROM bench.vault_map WHERE workspace_id = bench.ws(n) AND vendor = 'anthropic'))) FROM generate_series(1, KEYS) n"
    [read-pgcrypto]="SELECT count((SELECT pgp_sym_decrypt(secret, 'bench passphrase') FROM bench.pgc_keys WHERE workspace_id = bench.ws(n) AND vendor = 'anthropic')) FROM generate_series(1, KEYS) n"
    [read-plain]="SELECT count((SELECT api_key FROM bench.plain_keys WHERE workspace_id = bench.ws(n) AND vendor = 'anthropic')) FROM generate_series(1, KEYS) n"
)
use_every_key() {
    local level=$1 v a b
    for v in read-byok read-byok-vault read-vault read-pgcrypto read-plain; do
        if [ "$vault" = 0 ] && [[ $v == *-vault ]]; then continue; fi
        a=$(date +%s.%N)
        as_pg "$sysbin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$dir" -U "${login[$v]:-postgres}" -d postgres \
            -c "${first_use[$v]//KEYS/$level}" >/dev/null
        b=$(date +%s.%N)
        rec firstuse "$level" "$v" "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b - a }')"
    done
    wait_usage_flushed "the first uses' flush may fall inside the runs"
}

run_level() {
    local level=$1 r i v sync o
    use_every_key "$level"
    for ((r = 0; r < runs; r++)); do
        for sync in on off; do
            for ((i = 0; i < ${#variants[@]}; i++)); do
                v=${variants[$(((i + r) % ${#variants[@]}))]}
                if [ "$vault" = 0 ] && [[ $v == *-vault ]]; then continue; fi
                psql_ -c 'VACUUM byok.keys, byok.jobs, bench.pgc_keys, bench.plain_keys' >/dev/null
                o=$(pgb "$v" "$sync" "-T $secs")
                rec tps "$level" "$sync" "$v" "$r" "$(echo "$o" | awk '/^tps/ {print $3}')" \
                    "$(echo "$o" | awk '/^latency average/ {print $4}')"
            done
        done
        log "level $level: run $((r + 1))/$runs done (load $(cut -d' ' -f1-3 /proc/loadavg))"
    done
}

# WAL per stored key: N adds, one client, each its own transaction.
wal_per_key() {
    local level=$1 v a b
    # The LSN counts every process's WAL: autovacuum is switched off (after a
    # VACUUM of everything, and once its workers are gone) for this step.
    psql_ -c 'ALTER SYSTEM SET autovacuum = off' -c 'SELECT pg_reload_conf()' -c 'VACUUM' >/dev/null
    while [ "$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" != 0 ]; do
        sleep 0.5
    done
    # So does the usage worker: it writes the read runs' use counters into
    # byok.key_usage (100k keys: 100k rows) within byok.usage_flush_interval.
    # Wait until every counter is flushed (a flushed counter frees its
    # slot); none is left to fall inside the measurement (adds count no uses).
    wait_usage_flushed "WAL figures may include one"
    for v in store-byok-superuser store-byok-postgrest store-vault store-pgcrypto store-plain; do
        if [ "$vault" = 0 ] && [ "$v" = store-vault ]; then continue; fi
        # No CHECKPOINT first: after the runs above, the pages an add touches
        # already had their full-page image; pg_stat_wal counts any left.
        psql_ -c "SELECT pg_stat_reset_shared('wal')" >/dev/null
        a=$(psql_ -c 'SELECT pg_current_wal_lsn()')
        pgb "$v" on "-t $wal_n" 1 >/dev/null
        b=$(psql_ -c 'SELECT pg_current_wal_lsn()')
        rec wal "$level" "$v" "$wal_n" "$(psql_ -c "SELECT pg_wal_lsn_diff('$b', '$a')")" \
            "$(psql_ -F $'\t' -c 'SELECT wal_records, wal_fpi FROM pg_stat_wal')"
    done
    psql_ -c 'ALTER SYSTEM RESET autovacuum' -c 'SELECT pg_reload_conf()' >/dev/null
}

# The records one add writes, by relation (after a warm-up add, so no
# full-page image: the pages were touched since the checkpoint).
waldump_one() {
    local v=$1 sql=$2 a b
    psql_ -c "$sql" >/dev/null
    a=$(psql_ -c 'SELECT pg_current_wal_lsn()')
    psql_ -c "$sql" >/dev/null
    b=$(psql_ -c 'SELECT pg_current_wal_lsn()')
    psql_ -c 'SELECT pg_switch_wal()' >/dev/null
    as_pg "$pg_waldump" -p "$dir/data/pg_wal" -s "$a" -e "$b" 2>/dev/null |
        sed -n 's/^rmgr: \([A-Za-z0-9]*\) *len (rec\/tot): *\([0-9]*\)\/ *\([0-9]*\),.*desc: \([A-Z_+a-z0-9]*\).*/\1 \4 \3 &/p' |
        while read -r rmgr desc tot line; do
            rel=$(echo "$line" | { grep -o 'rel [0-9]*/[0-9]*/[0-9]*' || true; } | head -1 | cut -d/ -f3)
            name=-
            [ -n "$rel" ] && name=$(psql_ -c "SELECT coalesce(pg_filenode_relation(0, $rel)::text, '$rel')")
            rec waldump "$v" "$rmgr" "$desc" "$name" "$tot"
        done
}

# Where add_key's time goes: every statement inside, on the PostgREST path.
profile_add_key() {
    local n=$1
    {
        echo "SET pg_stat_statements.track = 'all';"
        echo "SELECT pg_stat_statements_reset();"
        for ((i = 1; i <= n; i++)); do
            echo "BEGIN; SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{\"sub\":\"$member\",\"role\":\"authenticated\"}', true);"
            echo "SELECT byok.add_key(bench.ws($(((i % seeded) + 1))), 'anthropic', '$k'); COMMIT;"
        done
    } >"$dir/profile.sql"
    chmod 644 "$dir/profile.sql"
    psql_ -f "$dir/profile.sql" >/dev/null
    psql_ -F $'\t' -c "SELECT toplevel, calls, round(mean_exec_time::numeric, 4), round(total_exec_time::numeric, 1),
        regexp_replace(left(query, 160), '\s+', ' ', 'g')
        FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
        ORDER BY total_exec_time DESC LIMIT 25" |
        while IFS=$'\t' read -r top calls mean total q; do rec pgss "$top" "$calls" "$mean" "$total" "$q"; done
}

# perf's call graph of one backend running add_key on the PostgREST path.
perf_add_key() {
    local pid
    command -v perf >/dev/null || { log "perf not found: no profile"; return 0; }
    pgb store-byok-postgrest off "-T 8" 1 >/dev/null &
    sleep 1
    pid=$(psql_ -c "SELECT pid FROM pg_stat_activity WHERE usename = 'authenticator' LIMIT 1")
    perf record -q -g -p "$pid" -o "$dir/perf.data" -- sleep 5 >/dev/null 2>&1 || true
    wait
    perf report -q -i "$dir/perf.data" --no-children --percent-limit 0.7 --stdio -g none \
        --sort symbol 2>/dev/null | sed -n 's/^ *\([0-9.]*\)% *\[.\] *\(.*\)$/\1\t\2/p' |
        while IFS=$'\t' read -r pct sym; do rec perf self "$pct" "$sym"; done
    perf report -q -i "$dir/perf.data" --children --percent-limit 1.5 --stdio -g none \
        --sort symbol 2>/dev/null | sed -n 's/^ *\([0-9.]*\)% *[0-9.]*% *\[.\] *\(.*\)$/\1\t\2/p' |
        while IFS=$'\t' read -r pct sym; do rec perf children "$pct" "$sym"; done
}

for level in "${levels[@]}"; do
    seed_to "$level"
    [ "$perf" = 1 ] && [ "$level" = "${levels[0]}" ] && perf_add_key
    run_level "$level"
    wal_per_key "$level"
done
log "one add's WAL records (pg_waldump) and the statement profile"
waldump_one store-byok-superuser "SELECT byok.add_key(gen_random_uuid(), 'anthropic', '$k')"
[ "$vault" = 1 ] && waldump_one store-vault "SELECT vault.create_secret('$k')"
waldump_one store-plain "INSERT INTO bench.plain_keys (workspace_id, vendor, api_key) VALUES (gen_random_uuid(), 'anthropic', '$k')"
profile_add_key "$([ "$quick" = 1 ] && echo 200 || echo 2000)"

# ------------------------------------------------------- the pipeline side
# The steps above leave work behind on this cluster (autovacuum of 100k-row
# tables, the usage worker's flushes, dirty buffers): finish it first, so it
# does not run beside graphile-worker (which uses this cluster) or the
# sidecars (whose cluster is their own, on the same two cores).
log "quiescing the cluster before the pipeline: VACUUM, usage flush, CHECKPOINT"
psql_ -c 'VACUUM ANALYZE' >/dev/null
wait_usage_flushed "it may run beside graphile-worker"
psql_ -c 'CHECKPOINT' >/dev/null
vendor_for() {  # latency_ms -> starts the mock vendor, sets vendor_url
    "$mock_bin" --listen 127.0.0.1:0 --slow-ms "$1" >"$dir/mock-$1.out" 2>"$dir/mock-$1.err" &
    pids+=($!)
    for _ in $(seq 50); do grep -q 'listening on' "$dir/mock-$1.out" 2>/dev/null && break; sleep 0.1; done
    vendor_url=$(sed -n 's/^mock-vendor listening on //p' "$dir/mock-$1.out")
    [ -n "$vendor_url" ] || { echo "the mock vendor did not start" >&2; cat "$dir/mock-$1.err" >&2; exit 1; }
}
for latency in 0 150; do
    vendor_for "$latency"
    # graphile-worker: npm package, installed once (idempotent).
    npmdir=${BENCH_NPM_DIR:-/var/cache/pg_byok/bench-npm}
    if command -v npm >/dev/null && { [ -d "$npmdir/node_modules/graphile-worker" ] ||
        { mkdir -p "$npmdir" && (cd "$npmdir" && { [ -f package.json ] || echo '{"private":true}' >package.json; } &&
            npm install --no-audit --no-fund -q graphile-worker pg >&2); }; }; then
        log "graphile-worker: $pipe_jobs jobs, vendor latency $latency ms"
        if o=$(NODE_PATH=$npmdir/node_modules node "$repo/bench/graphile/validate.cjs" \
            "postgres:///postgres?host=$dir&user=postgres" "$vendor_url/anthropic" "$pipe_jobs" "$latency" 2>"$dir/graphile.err"); then
            rec graphile "$latency" "$o" "$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$npmdir/node_modules/graphile-worker/package.json" | head -1)"
        else
            log "graphile-worker failed: $(tail -5 "$dir/graphile.err")"
            rec graphile "$latency" failed
        fi
    else
        rec graphile "$latency" skipped
    fi
done
# The sidecar side (bench/pipeline.rs, when this checkout has it): its own
# cluster with this build's extension, real byok-sidecar processes at their
# defaults, the mock vendor; one JSON line per run (drain validations/s,
# trickle p50/p99, peak RSS).
if [ -f bench/pipeline.rs ] && grep -q 'bench/pipeline.rs' integration/Cargo.toml 2>/dev/null; then
    log "the sidecar side: bench/pipeline.rs"
    # Its cluster is its own: this one is not needed any more, and is
    # stopped so its background processes take no CPU from the sidecars'.
    as_pg "$bin/pg_ctl" stop -m fast -D "$dir/data" >/dev/null
    extdir=$dir/extension-files
    mkdir -p "$extdir"
    cp "$pkg_lib/pg_byok.so" "$pkg_ext"/pg_byok.control "$pkg_ext"/pg_byok--*.sql "$extdir/"
    # Quick mode (CI) uses the debug builds the test command already made.
    profile=$([ "$quick" = 1 ] && echo debug || echo release)
    if cargo build $([ "$quick" = 1 ] || echo --release) -q -p byok-sidecar -p byok-mock-vendor \
        -p byok-integration --bin pipeline --bin byok-sidecar --bin byok-mock-vendor 2>"$dir/pipeline-build.err"; then
        for sidecars in $([ "$quick" = 1 ] && echo 1 || echo 1 2 4); do
            for latency in 0 150; do
                if o=$("$CARGO_TARGET_DIR/$profile/pipeline" --keys "$pipe_jobs" --sidecars "$sidecars" \
                    --latency-ms "$latency" --vendor anthropic --extension-dir "$extdir" \
                    $([ "$quick" = 1 ] && echo --trickle-seconds 2) 2>"$dir/pipeline.err" | tail -1); then
                    rec pipeline "$o"
                else
                    log "bench/pipeline.rs failed: $(tail -5 "$dir/pipeline.err")"
                    rec pipeline failed
                fi
            done
        done
    else
        log "building bench/pipeline.rs failed: $(tail -5 "$dir/pipeline-build.err")"
        rec pipeline failed
    fi
else
    rec pipeline skipped
fi
rec meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
rec meta duration_s "$(($(date +%s) - started))"

args=(--raw "$raw" --out "$out")
[ "$quick" = 0 ] && args+=(--benchmarks BENCHMARKS.md)
python3 bench/report.py "${args[@]}"
log "done: $out/report.md$([ "$quick" = 0 ] && echo ', BENCHMARKS.md')"
