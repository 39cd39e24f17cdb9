#!/usr/bin/env bash
# Install everything pg_byok needs on Debian 12, idempotently: PostgreSQL 15
# with server headers, clang for bindgen, sudo (cargo-pgrx --runas uses it),
# cargo-pgrx 0.18.0 (newer ones need a newer rustc) and its pg15 config;
# Node.js and Chromium for the examples' tests (scripts/examples.sh).
set -euo pipefail

PGRX_VERSION=0.18.0
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
packages=(sudo postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang pkg-config nodejs chromium)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The test command runs cargo fmt --check and cargo clippy.
for component in rustfmt clippy; do
    cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$component"
done

# The Debian package starts a cluster on 5432; pg_byok's scripts never use it.
if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
    echo "setup: installing cargo-pgrx ${PGRX_VERSION} (a few minutes)"
    cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
fi

if ! grep -qs "^pg15 = \"${PG_CONFIG}\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    cargo pgrx init --pg15 "${PG_CONFIG}"
fi
echo "setup: ok (PostgreSQL $("${PG_CONFIG}" --version | awk '{print $2}'), $(cargo pgrx --version))"
