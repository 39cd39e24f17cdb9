# Sourced by the bench scripts: a throw-away PostgreSQL 15 cluster with
# pg_byok preloaded, started as the postgres OS user when run as root.
#
#   bench_cluster NAME   # sets dir, port, lib, libfile; initdb, 0600 keyring,
#                        # the shared settings; the caller appends its own
#                        # settings to $dir/data/postgresql.conf and starts it
#
# BYOK_LIB=/path/to/libpg_byok.so benchmarks that library file instead of
# the installed one: it is copied into the cluster directory and preloaded
# from there. A library with debug info is reported: its figures mean little.
# The cluster is stopped and removed when the calling script exits.

bin=${BYOK_PG_BIN:-/usr/lib/postgresql/15/bin}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

bench_cleanup() {
    as_pg "$bin/pg_ctl" stop -m immediate -D "$dir/data" >/dev/null 2>&1 || true
    rm -rf "$dir"
}

bench_cluster() {
    dir=$(mktemp -d "/tmp/byok-bench-$1.XXXXXX")
    chmod 755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi
    port=$((20000 + RANDOM % 30000))
    trap bench_cleanup EXIT

    lib=pg_byok
    libfile=$("$bin/pg_config" --pkglibdir)/pg_byok.so
    if [ -n "${BYOK_LIB:-}" ]; then
        cp "$BYOK_LIB" "$dir/pg_byok.so"
        chmod 755 "$dir/pg_byok.so"
        lib="$dir/pg_byok.so"
        libfile=$BYOK_LIB
    fi
    if file "$libfile" | grep -q 'with debug_info'; then
        echo "WARNING: $libfile is a debug build: its figures mean little" >&2
    fi

    as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >/dev/null
    as_pg sh -c "umask 077; printf '1 %s\n' $(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') > '$dir/keyring'"
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
shared_preload_libraries = '$lib'
byok.master_key_file = '$dir/keyring'
logging_collector = off
log_destination = 'stderr'
CONF
}
