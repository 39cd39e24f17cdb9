#!/usr/bin/env bash
# The examples: examples/edge-function (a Supabase-style Deno function) and
# examples/settings-page (the "Settings → Keys" page it serves as backend).
#
#   bash scripts/examples.sh test    a throw-away cluster with pg_byok, the
#                                    sidecar and the mock vendor; the function's
#                                    Deno tests, then the page in headless
#                                    Chromium (screenshots in target/); stops all
#   bash scripts/examples.sh serve   (scripts/demo.sh) start the function and the
#                                    page against the demo's running cluster
#   bash scripts/examples.sh tools   only install Deno and playwright-core
#
# Installs its tools once: Deno (npm package `deno`, which ships the binary)
# and playwright-core into a cache directory; Debian's chromium comes from
# scripts/setup.sh. No test reaches a real vendor: the function's vendor base
# URLs point at the mock vendor on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=/usr/lib/postgresql/15/bin
default_cache=/var/cache/pg_byok
mkdir -p "$default_cache" 2>/dev/null || default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/pg_byok
cache=${BYOK_CACHE_DIR:-$default_cache}/npm-examples
export DENO_DIR=$cache/deno DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
deno=$cache/node_modules/.bin/deno
edge=$root/examples/edge-function
page=$root/examples/settings-page
DENO_VERSION=2.9.6
PLAYWRIGHT_CORE_VERSION=1.65.1

tools() {
    local have_deno="" have_pw=""
    [ -x "$deno" ] && have_deno=$("$deno" --version | head -1)
    [ -f "$cache/node_modules/playwright-core/package.json" ] \
        && have_pw=$(node -p "require('$cache/node_modules/playwright-core/package.json').version")
    if [[ "$have_deno" != "deno $DENO_VERSION "* ]] || [ "$have_pw" != "$PLAYWRIGHT_CORE_VERSION" ]; then
        mkdir -p "$cache"
        npm install --silent --no-audit --no-fund --prefix "$cache" \
            "deno@$DENO_VERSION" "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2
    fi
    # npm:postgres, pinned by examples/edge-function/deno.lock, into DENO_DIR.
    (cd "$edge" && "$deno" install --frozen --quiet)
}

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
wait_for() {  # file, pattern: up to 15 s
    for _ in $(seq 150); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "examples: '$2' never appeared in $1:" >&2; cat "$1" >&2; return 1
}

# Start the function and the page server in the background.
#   start_apps RUN_DIR PG_PORT ANTHROPIC_URL OPENAI_URL WORKSPACE USER
start_apps() {
    local run=$1 pg_port=$2 anthropic=$3 openai=$4 ws=$5 user=$6 edge_port page_port
    edge_port=$(free_port); page_port=$(free_port)
    # The function may reach loopback and the two vendor hosts, nothing else.
    local net
    net=$(node -e 'console.log(["127.0.0.1", ...process.argv.slice(1).map((u) => new URL(u).host)].join(","))' \
        "$anthropic" "$openai")
    (cd "$edge" && DATABASE_URL="postgres://authenticator@127.0.0.1:$pg_port/postgres" \
        ANTHROPIC_BASE_URL=$anthropic OPENAI_BASE_URL=$openai PORT=$edge_port \
        ALLOWED_ORIGIN="http://127.0.0.1:$page_port" \
        exec "$deno" run --frozen --allow-net="$net" --allow-env --allow-read=. --allow-sys index.ts \
        > "$run/edge.log" 2>&1) &
    echo $! > "$run/edge.pid"
    (cd "$page" && API_URL="http://127.0.0.1:$edge_port" WORKSPACE_ID=$ws USER_ID=$user PORT=$page_port \
        exec "$deno" run --allow-net=127.0.0.1 --allow-env --allow-read=. serve.ts > "$run/page.log" 2>&1) &
    echo $! > "$run/page.pid"
    wait_for "$run/edge.log" '"listening"'
    wait_for "$run/page.log" '"listening"'
    EDGE_URL=http://127.0.0.1:$edge_port PAGE_URL=http://127.0.0.1:$page_port
}

# The Supabase login role the function connects as.
authenticator_sql="DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN
    CREATE ROLE authenticator LOGIN NOINHERIT;
  END IF;
END \$\$;
GRANT anon, authenticated, service_role TO authenticator;"

[ "${1:-}" = tools ] && { tools; echo "deno: $deno; playwright-core: $cache/node_modules/playwright-core"; exit 0; }
if [ "${1:-}" = serve ]; then
    # Called by scripts/demo.sh with its cluster's settings in the environment.
    : "${BYOK_DEMO_RUN:?}" "${BYOK_DEMO_PORT:?}" "${ANTHROPIC_BASE_URL:?}" "${OPENAI_BASE_URL:?}"
    tools
    psql -X -q -h "$BYOK_DEMO_RUN" -p "$BYOK_DEMO_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$authenticator_sql"
    start_apps "$BYOK_DEMO_RUN" "$BYOK_DEMO_PORT" "$ANTHROPIC_BASE_URL" "$OPENAI_BASE_URL" \
        "${BYOK_DEMO_WORKSPACE:?}" "${BYOK_DEMO_USER:?}"
    echo "Settings → Keys: $PAGE_URL (its backend, the edge function: $EDGE_URL)"
    exit 0
fi
[ "${1:-}" = test ] || { echo "usage: bash scripts/examples.sh test|serve|tools" >&2; exit 2; }

# ---- test ----------------------------------------------------------------
tools
if [ ! -f "$("$bin/pg_config" --sharedir)/extension/pg_byok.control" ]; then
    flock /tmp/byok-pg.lock env BYOK_PROFILE="${BYOK_PROFILE:-debug}" bash scripts/install-extension.sh
fi
# The mock vendor: its own binary once the workspace has the byok-mock-vendor
# crate, `byok-sidecar mock-vendor` before.
target=${CARGO_TARGET_DIR:-$root/target}
if cargo metadata --no-deps --format-version 1 | grep -q '"name":"byok-mock-vendor"'; then
    cargo build -q -p byok-sidecar -p byok-mock-vendor
    mock_cmd=("$target/debug/byok-mock-vendor")
else
    cargo build -q -p byok-sidecar
    mock_cmd=("$target/debug/byok-sidecar" mock-vendor)
fi

run=$(mktemp -d /tmp/byok-examples.XXXXXX)
shots=$root/target/examples-screenshots
rm -rf "$shots"; mkdir -p "$shots"
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    for p in page edge sidecar mock; do
        [ -f "$run/$p.pid" ] && kill "$(cat "$run/$p.pid")" 2>/dev/null || true
    done
    [ -f "$run/data/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$run/data" -m fast -w stop >/dev/null || true
    if [ "${BYOK_KEEP_RUN:-0}" = 1 ]; then echo "kept $run"; else rm -rf "$run"; fi
}
trap cleanup EXIT
[ "$(id -u)" -eq 0 ] && chown postgres "$run"

key_hex=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
printf '1 %s\n' "$key_hex" > "$run/keyring"; unset key_hex
chmod 600 "$run/keyring"; [ "$(id -u)" -eq 0 ] && chown postgres "$run/keyring"
pg_port=$(free_port)
as_postgres "$bin/initdb" -D "$run/data" -A trust -E UTF8 --locale=C --no-instructions >/dev/null
cat >> "$run/data/postgresql.conf" <<CONF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$run'
shared_preload_libraries = 'pg_byok'
byok.master_key_file = '$run/keyring'
# One attempt: a key the vendor cannot judge (5xx) is 'unverified' at once.
byok.max_attempts = 1
# Every statement and its bound parameters reach the log: the tests check
# that no key does (pg_byok's log hook masks them).
log_statement = 'all'
CONF
as_postgres "$bin/pg_ctl" -D "$run/data" -l "$run/postgres.log" -w start >/dev/null

# A and B for the function's tests (B's member is the outsider), C for the page's.
ws_a=a0000000-0000-4000-8000-00000000000a ws_b=a0000000-0000-4000-8000-00000000000b
ws_c=a0000000-0000-4000-8000-00000000000c
user_a=b0000000-0000-4000-8000-00000000000a user_b=b0000000-0000-4000-8000-00000000000b
user_c=b0000000-0000-4000-8000-00000000000c
psql -X -q -h "$run" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 -o /dev/null <<SQL
CREATE EXTENSION pg_byok;
CREATE ROLE anon NOLOGIN; CREATE ROLE authenticated NOLOGIN; CREATE ROLE service_role NOLOGIN;
SELECT byok.grant_supabase_roles();
$authenticator_sql
CREATE ROLE byok_sidecar LOGIN IN ROLE byok_worker;
CREATE SCHEMA app;
CREATE TABLE app.workspaces (id uuid PRIMARY KEY, name text, status text NOT NULL DEFAULT 'active');
CREATE TABLE app.members (workspace_id uuid REFERENCES app.workspaces, user_id uuid);
INSERT INTO app.workspaces VALUES ('$ws_a', 'Acme', 'active'), ('$ws_b', 'Globex', 'active'), ('$ws_c', 'Initech', 'active');
INSERT INTO app.members VALUES ('$ws_a', '$user_a'), ('$ws_b', '$user_b'), ('$ws_c', '$user_c');
SELECT byok.attach_members('app.members', 'workspace_id', 'user_id');
SELECT byok.attach_workspaces('app.workspaces', 'id', 'status');
SQL

"${mock_cmd[@]}" --listen 127.0.0.1:0 > "$run/mock.log" 2>&1 &
echo $! > "$run/mock.pid"
wait_for "$run/mock.log" listening
mock=$(sed -n 's/^mock-vendor listening on //p' "$run/mock.log")
DATABASE_URL="postgres://byok_sidecar@127.0.0.1:$pg_port/postgres" \
ANTHROPIC_BASE_URL=$mock/anthropic OPENAI_BASE_URL=$mock/openai \
    "$target/debug/byok-sidecar" --metrics-addr 127.0.0.1:0 --poll-interval 1 > "$run/sidecar.log" 2>&1 &
echo $! > "$run/sidecar.pid"
start_apps "$run" "$pg_port" "$mock/anthropic" "$mock/openai" "$ws_c" "$user_c"

export EDGE_URL PAGE_URL MOCK_URL=$mock WS_A=$ws_a WS_B=$ws_b USER_A=$user_a USER_B=$user_b
export PG_SOCKET_DIR=$run PG_PORT=$pg_port PG_LOG=$run/postgres.log EDGE_LOG=$run/edge.log
export SCREENSHOT_DIR=$shots PLAYWRIGHT_CORE=$cache/node_modules/playwright-core
status=0
echo "== examples: deno check, lint and fmt --check"
(cd "$edge" && "$deno" check --frozen --quiet index.ts test/*.ts && "$deno" lint --quiet && "$deno" fmt --check --quiet) || status=1
(cd "$page" && "$deno" check --quiet serve.ts && "$deno" lint --quiet && "$deno" fmt --check --quiet) || status=1
echo "== edge function: Deno tests (unit, and end to end against $EDGE_URL)"
(cd "$edge" && "$deno" test --frozen --allow-net=127.0.0.1 --allow-env --allow-read --allow-run=psql --allow-sys) || status=1
echo "== settings page: headless Chromium against $PAGE_URL"
node --test "$page/test/" || status=1
echo "screenshots: $shots"
if [ "$status" -ne 0 ]; then
    echo "--- sidecar log (tail)"; tail -20 "$run/sidecar.log"
    echo "--- edge function log (tail)"; tail -20 "$run/edge.log"
fi
exit "$status"
