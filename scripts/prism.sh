#!/usr/bin/env bash
# Serve the vendors' own OpenAPI specs (shared/reference/openapi, beside this
# repository) with Prism on loopback, for sidecar/tests/prism.rs: our probe
# requests must pass the specs' request validation.
#
#   eval "$(bash scripts/prism.sh start)"   # prints the BYOK_PRISM_* exports
#   bash scripts/prism.sh stop
#
# Installs @stoplight/prism-cli (npm) into a cache directory once. Exits 3
# (printing why on stderr) when the specs or Node are not available.
set -euo pipefail
cd "$(dirname "$0")/.."
specs=${BYOK_OPENAPI_DIR:-$PWD/../shared/reference/openapi}
default_cache=/var/cache/pg_byok
mkdir -p "$default_cache" 2>/dev/null || default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/pg_byok
cache=${BYOK_CACHE_DIR:-$default_cache}/prism
run=${TMPDIR:-/tmp}/pg_byok_prism
version=5.14.2

stop() {
    for v in openai anthropic; do
        [ -f "$run/$v.pid" ] && kill "$(cat "$run/$v.pid")" 2>/dev/null || true
        rm -f "$run/$v.pid"
    done
}
[ "${1:-}" = stop ] && { stop; exit 0; }

if [ ! -f "$specs/openai.prism.json" ] || [ ! -f "$specs/anthropic.prism.json" ]; then
    echo "prism: no vendor specs at $specs" >&2; exit 3
fi
if ! command -v node >/dev/null || ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)'; then
    echo "prism: Node 18.20+ is needed" >&2; exit 3
fi
prism=$cache/node_modules/.bin/prism
if [ ! -x "$prism" ]; then
    mkdir -p "$cache"
    npm install --silent --no-audit --no-fund --prefix "$cache" "@stoplight/prism-cli@$version" >&2
fi

stop; mkdir -p "$run"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000)); }
start() {  # vendor, extra args...
    local v=$1 port; shift; port=$(free_port)
    "$prism" mock "$specs/$v.prism.json" -p "$port" -h 127.0.0.1 "$@" > "$run/$v.log" 2>&1 &
    echo $! > "$run/$v.pid"
    echo "$port"
}
openai_port=$(start openai --errors)
# Anthropic: dynamic mode (its static examples predate its own schema).
anthropic_port=$(start anthropic --errors -d --seed 1 --json-schema-faker-fillProperties=false)
for v in openai anthropic; do
    for _ in $(seq 120); do grep -q "Prism is listening" "$run/$v.log" && break; sleep 0.5; done
    grep -q "Prism is listening" "$run/$v.log" || { echo "prism: $v did not start; see $run/$v.log" >&2; stop; exit 1; }
done
echo "export BYOK_PRISM_OPENAI=http://127.0.0.1:$openai_port BYOK_PRISM_ANTHROPIC=http://127.0.0.1:$anthropic_port"
