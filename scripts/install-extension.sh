#!/usr/bin/env bash
# Build pg_byok and install it into the system's PostgreSQL 15
# (/usr/lib/postgresql/15/lib and /usr/share/postgresql/15/extension).
# Release build by default; BYOK_PROFILE=debug for a faster, slower-running one.
set -euo pipefail
cd "$(dirname "$0")/.."
pg_config=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
args=(--pg-config "$pg_config")
[ "${BYOK_PROFILE:-release}" = release ] && args+=(--release)
[ "$(id -u)" -ne 0 ] && args+=(--sudo)
cargo pgrx install "${args[@]}"
