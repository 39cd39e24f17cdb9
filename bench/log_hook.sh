#!/usr/bin/env bash
# Benchmark (issue 5): the cost of pg_byok's log redaction hook per log line.
#
#   bash bench/log_hook.sh [rounds] [lines_per_round]      (defaults: 15 100000)
#
# Needs the installed extension (bash scripts/install-extension.sh) and
# pgbench (postgresql-contrib). Starts its own throw-away cluster (as the
# postgres OS user when run as root) with pg_byok preloaded and the cheapest
# log path there is (stderr straight to /dev/null, no logging collector), so
# the hook's share of a log line is as visible as it can be.
#
# 1. Server side, per log line: a PL/pgSQL loop issues RAISE LOG n times and
#    returns the wall time per line (each line runs the hook over message and
#    context). Variants, interleaved in every round:
#      not-logged    log_min_messages = fatal: the line is not written and the
#                    hook is not called (what logging itself costs, by difference)
#      off/no-key    byok.redact_logs = off, a line without a key
#      on/no-key     byok.redact_logs = on,  the same line       <- the claim
#      off/key       byok.redact_logs = off, a line holding an Anthropic key
#      on/key        byok.redact_logs = on,  the same line (masked)
# 2. End to end: pgbench, `SELECT 1` over TCP with log_statement = all and
#    log_min_duration_statement = 0 (2 log lines per statement), hook off vs
#    on, interleaved, 10 s each.
# Prints the median (min-max) of each variant.
#
# BYOK_LIB=/path/to/libpg_byok.so benchmarks that library file instead of the
# installed one (e.g. target/release/libpg_byok.so after
# scripts/install-extension.sh, when someone has since installed a debug
# build). A library with debug info is reported: its figures mean little.
set -euo pipefail
rounds=${1:-15}
lines=${2:-100000}
cd "$(dirname "$0")/.."
. bench/cluster.sh
pgbench=$(command -v pgbench || echo "$bin/pgbench")

bench_cluster loghook
cat >>"$dir/data/postgresql.conf" <<EOF
log_line_prefix = '%m [%p] %q%u@%d '
EOF
as_pg "$bin/pg_ctl" start -w -D "$dir/data" -l /dev/null >/dev/null

psql_() { as_pg "$bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres "$@"; }

key="sk-ant-api03-$(head -c 200 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | head -c 93)AA"
psql_ <<'SQL'
CREATE FUNCTION log_lines(n int, msg text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1..n LOOP
        RAISE LOG '%', msg;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1e9 / n;  -- ns per line
END $$;
SQL

plain="vendor call for workspace 0b7c1f3e-5d7a-4c1e-9a51-2f1f0e6d8c42 finished in 182 ms (status 200)"
keyed="vendor call for workspace 0b7c1f3e-5d7a-4c1e-9a51-2f1f0e6d8c42 with key $key failed (status 401)"

declare -A results
variants=(not-logged off/no-key on/no-key off/key on/key)
run_variant() {
    local v=$1 msg redact minmsg=log
    case $v in
        not-logged) msg=$plain; redact=on; minmsg=fatal ;;
        off/no-key) msg=$plain; redact=off ;;
        on/no-key)  msg=$plain; redact=on ;;
        off/key)    msg=$keyed; redact=off ;;
        on/key)     msg=$keyed; redact=on ;;
    esac
    psql_ -c "SET byok.redact_logs = $redact" -c "SET log_min_messages = $minmsg" \
          -c "SELECT round(log_lines($lines, '$msg')::numeric, 0)"
}
# Warm-up round (discarded), then interleaved rounds in rotating order.
for v in "${variants[@]}"; do run_variant "$v" >/dev/null; done
for ((r = 0; r < rounds; r++)); do
    for ((i = 0; i < ${#variants[@]}; i++)); do
        v=${variants[$(((i + r) % ${#variants[@]}))]}
        results[$v]+="$(run_variant "$v") "
    done
done

stats() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {printf "%d (%d-%d)", a[int((NR+1)/2)], a[1], a[NR]}'; }

echo "## server side: ns per RAISE LOG line, median (min-max) of $rounds rounds x $lines lines"
echo
echo "| variant | ns per line |"
echo "|---|---|"
for v in "${variants[@]}"; do echo "| $v | $(echo "${results[$v]}" | stats) |"; done

# End to end with pgbench.
echo 'SELECT 1;' >"$dir/select1.sql"
chmod 644 "$dir/select1.sql"
declare -A tps
for ((r = 0; r < 3; r++)); do
    for redact in off on; do
        t=$(as_pg env PGOPTIONS="-c byok.redact_logs=$redact -c log_statement=all -c log_min_duration_statement=0" \
            "$pgbench" -n -h 127.0.0.1 -p "$port" -U postgres -c 1 -j 1 -T "${BENCH_SECONDS:-10}" -f "$dir/select1.sql" postgres 2>"$dir/pgbench.err" |
            awk '/^tps/ {printf "%d", $3}') || { cat "$dir/pgbench.err" >&2; exit 1; }
        tps[$redact]+="$t "
    done
done
echo
echo "## end to end: pgbench SELECT 1, log_statement = all + log_min_duration_statement = 0, 1 client, 3 x ${BENCH_SECONDS:-10} s"
echo
echo "| byok.redact_logs | tps, median (min-max) |"
echo "|---|---|"
for redact in off on; do echo "| $redact | $(echo "${tps[$redact]}" | stats) |"; done
echo
echo "(machine load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
