#!/usr/bin/env bash
# Build an earlier pg_byok release from this repository's own history (no
# network but the crate registry cargo already caches) and cache its
# installable files, for the upgrade test:
#
#   bash scripts/build-release.sh [VERSION]      # default 0.1.0
#
# prints the cache directory, which holds
#   pg_byok.so  pg_byok.control  pg_byok--VERSION.sql  commit  (and nm-exports.txt)
# The release's commit is tag vVERSION, or, in a clone without tags, the
# newest commit on the first-parent history whose Cargo.toml says
# `version = "VERSION"`. A second run with the same commit reuses the cache
# (${BYOK_RELEASE_CACHE:-/var/cache/pg_byok/releases}/VERSION-COMMIT/).
#
# The build has its own target dir (${BYOK_RELEASE_TARGET_DIR:-/var/cache/
# pg_byok/release-target}), not the shared CARGO_TARGET_DIR: cargo names a
# cdylib deps/libpg_byok.so whatever its version, so building 0.1.0 there
# would leave 0.1.0's library where a later, "fresh" build of the current
# version picks it up (cargo install/pgrx install would then ship it). The
# first build compiles the dependencies once (a few minutes); after that the
# release comes from the cache without building.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-0.1.0}
pg_config=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
cache_root=${BYOK_RELEASE_CACHE:-/var/cache/pg_byok/releases}
export CARGO_TARGET_DIR=${BYOK_RELEASE_TARGET_DIR:-/var/cache/pg_byok/release-target}

die() {
    echo "build-release: $*" >&2
    exit 1
}

# The version a commit's workspace Cargo.toml declares ([workspace.package]).
cargo_version() {
    git show "$1:Cargo.toml" 2>/dev/null |
        sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' | head -n1
}

find_commit() {
    local c
    if c=$(git rev-parse -q --verify "refs/tags/v$version^{commit}"); then
        [ "$(cargo_version "$c")" = "$version" ] ||
            die "tag v$version is commit $c, whose Cargo.toml says version $(cargo_version "$c")"
        echo "$c"
        return
    fi
    for c in $(git rev-list --first-parent HEAD); do
        if [ "$(cargo_version "$c")" = "$version" ]; then
            echo "$c"
            return
        fi
    done
    die "no tag v$version and no commit in HEAD's history with version $version in Cargo.toml (a shallow clone? run: git fetch --unshallow --tags)"
}

commit=$(find_commit)
out="$cache_root/$version-$commit"
if [ -f "$out/complete" ]; then
    echo "build-release: $version ($commit) cached in $out" >&2
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root" "$CARGO_TARGET_DIR"
work=$(mktemp -d "${TMPDIR:-/tmp}/pg_byok-release-$version.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "build-release: building $version from commit $commit (cold: a few minutes)" >&2
mkdir -p "$work/src"
git archive --format=tar "$commit" | tar -x -C "$work/src"

start=$(date +%s)
(cd "$work/src" && cargo pgrx package --pg-config "$pg_config" --profile dev \
    --out-dir "$work/pkg" >&2)

pkglibdir=$("$pg_config" --pkglibdir)
sharedir=$("$pg_config" --sharedir)
so="$work/pkg$pkglibdir/pg_byok.so"
sql="$work/pkg$sharedir/extension/pg_byok--$version.sql"
control="$work/pkg$sharedir/extension/pg_byok.control"
for f in "$so" "$sql" "$control"; do
    [ -f "$f" ] || die "cargo pgrx package did not produce $f"
done
grep -q "^default_version = '$version'" "$control" ||
    die "$control does not say default_version = '$version': $(grep default_version "$control")"

# Every C symbol the release's SQL names must be exported by its library.
stage="$cache_root/.$version-$commit.$$"
rm -rf "$stage"
mkdir -p "$stage"
cp "$so" "$stage/pg_byok.so"
cp "$sql" "$stage/"
cp "$control" "$stage/pg_byok.control"
echo "$commit" >"$stage/commit"
nm -D --defined-only "$so" | awk '{print $NF}' | sort -u >"$stage/nm-exports.txt"
grep -o "'MODULE_PATHNAME', *'[A-Za-z0-9_]*'" "$sql" | sed "s/.*, *'\(.*\)'/\1/" | sort -u \
    >"$stage/sql-symbols.txt"
missing=$(comm -23 "$stage/sql-symbols.txt" "$stage/nm-exports.txt")
[ -z "$missing" ] || { rm -rf "$stage"; die "the built library lacks symbols its SQL names: $missing"; }
touch "$stage/complete"
rm -rf "$out"
mv "$stage" "$out"
echo "build-release: $version built in $(($(date +%s) - start)) s, cached in $out" >&2
echo "$out"
