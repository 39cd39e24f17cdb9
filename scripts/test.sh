#!/usr/bin/env bash
# Every test pg_byok has, in the order a failure is cheapest to find:
#   0. formatting and lints (cargo fmt --check, cargo clippy -D warnings)
#   1. byok-core and sidecar unit/property tests (no database)
#   2. the extension's #[pg_test]s (cargo pgrx test, a cluster pgrx starts)
#   3. SQL-level scenarios, tenancy, sidecar end-to-end, the leak suite and
#      the 0.1.0 upgrade, each against real clusters the tests start as the
#      postgres OS user.
#   4. the examples, the vendor spec conformance, and the benchmark's quick
#      mode (bench/run.sh --quick) as a smoke test.
# Installs what it needs first (scripts/setup.sh). Run as root or a sudoer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; }

step "formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p pg_byok --features pg_test --all-targets --locked -- -D warnings   # the #[pg_test] build

step "unit and property tests (byok-core, byok-sidecar, byok-mock-vendor)"
cargo test -p byok-core --no-fail-fast
cargo test -p byok-sidecar -p byok-mock-vendor --lib --bins --no-fail-fast

step "extension #[pg_test]s"
pgdata_parent=$(mktemp -d /tmp/pg_byok_pgtest.XXXXXX)
trap 'rm -rf "$pgdata_parent"' EXIT
runas=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$pgdata_parent"
    runas=(--runas postgres)
fi
cargo pgrx test pg15 "${runas[@]}" --pgdata="$pgdata_parent/data"

step "release 0.1.0 built from git history, for the upgrade test (cached after the first run)"
# Its own target dir and cache under /var/cache/pg_byok; the upgrade test
# (integration step) installs it into a private Postgres root.
BYOK_RELEASE_0_1_0_DIR=$(bash scripts/build-release.sh 0.1.0)
export BYOK_RELEASE_0_1_0_DIR

step "install the extension for the integration tests"
# cargo pgrx test installed its test build; put the real one back.
BYOK_PROFILE=${BYOK_PROFILE:-debug} bash scripts/install-extension.sh

step "integration tests: scenarios, tenancy, sidecar end to end, leak suite, upgrade from 0.1.0"
# The leak suite runs both binaries as child processes.
cargo build -p byok-sidecar -p byok-mock-vendor
cargo test -p byok-integration -p byok-sidecar --test '*' --no-fail-fast -- --test-threads=2

step "examples: the edge function (Deno) and the Settings → Keys page (headless Chromium) on a real cluster"
bash scripts/examples.sh test

step "vendor spec conformance: the sidecar's requests against Prism serving the vendors' OpenAPI specs"
if exports=$(bash scripts/prism.sh start); then
    trap 'bash scripts/prism.sh stop; rm -rf "$pgdata_parent"' EXIT
    eval "$exports"
    cargo test -p byok-sidecar --test prism -- --ignored
else
    status=$?
    [ "$status" -eq 3 ] || exit "$status"
    echo "skipped: the vendor specs (../shared/reference/openapi) or Node are not available here"
fi

step "benchmark smoke test: bench/run.sh --quick (the installed build; Vault and graphile-worker skipped where absent)"
# A few seconds per variant: checks the side-by-side benchmark still runs end
# to end; its figures (a debug build on a busy machine) mean nothing.
BENCH_MOCK_BIN=${CARGO_TARGET_DIR:-target}/debug/byok-mock-vendor bash bench/run.sh --quick --installed
