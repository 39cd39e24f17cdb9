//! A private Postgres 15 install root, so a test can install another build
//! of pg_byok (an earlier release, then the new one) without touching the
//! system's, which other tests use at the same time.
//!
//! Debian's server binaries find their share and lib directories relative to
//! their own location (bindir `/usr/lib/postgresql/15/bin`, sharedir
//! `/usr/share/postgresql/15`, pkglibdir `/usr/lib/postgresql/15/lib`): a
//! copy of the binaries under `<root>/usr/lib/postgresql/15/bin` uses
//! `<root>/usr/share/postgresql/15` and `<root>/usr/lib/postgresql/15/lib`.
//! The binaries are copied (Postgres resolves symlinks to find itself);
//! everything else is symlinked to the system's, except pg_byok's own files.
//! [`PgRoot::from_system`] checks with the root's `pg_config` that the relocation
//! holds.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::pg_bin;

/// Programs copied into the root (the ones the tests run).
const PROGRAMS: &[&str] = &[
    "postgres",
    "initdb",
    "pg_ctl",
    "psql",
    "pg_dump",
    "pg_config",
];

/// A private install root in a temporary directory (removed on drop).
pub struct PgRoot {
    _tmp: tempfile::TempDir,
    bin: PathBuf,
    pkglib: PathBuf,
    extension: PathBuf,
}

/// The system install's directories, as its `pg_config` reports them.
struct Layout {
    bindir: PathBuf,
    pkglibdir: PathBuf,
    sharedir: PathBuf,
}

fn pg_config(program: &Path, what: &str) -> PathBuf {
    let out = Command::new(program)
        .arg(format!("--{what}"))
        .output()
        .unwrap_or_else(|e| panic!("run {} --{what}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} --{what} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn layout(pg_config_program: &Path) -> Layout {
    Layout {
        bindir: pg_config(pg_config_program, "bindir"),
        pkglibdir: pg_config(pg_config_program, "pkglibdir"),
        sharedir: pg_config(pg_config_program, "sharedir"),
    }
}

/// `<root>/<absolute path>`.
fn under(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

fn is_pg_byok_file(name: &str) -> bool {
    name == "pg_byok.so" || name.starts_with("pg_byok.") || name.starts_with("pg_byok--")
}

/// Symlink every entry of `from` into `to` (created), except pg_byok's files
/// and the names in `skip`.
fn link_entries(from: &Path, to: &Path, skip: &[&str]) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    let entries = fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_pg_byok_file(&name) || skip.contains(&name.as_str()) {
            continue;
        }
        symlink(entry.path(), to.join(&name))
            .unwrap_or_else(|e| panic!("symlink {}: {e}", entry.path().display()));
    }
}

fn copy(from: &Path, to: &Path) {
    // Remove first: never write through an existing file (a running server
    // may have it mapped).
    let _ = fs::remove_file(to);
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    let mode = if fs::metadata(from).unwrap().permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).unwrap();
}

impl PgRoot {
    /// Build a root from the system install whose binaries are in
    /// [`pg_bin`]`("")`, with no pg_byok files in it yet.
    pub fn from_system() -> PgRoot {
        let sys = layout(&pg_bin("pg_config"));
        let base = std::env::var_os("BYOK_CLUSTER_TMPDIR").unwrap_or_else(|| "/tmp".into());
        let tmp = tempfile::Builder::new()
            .prefix("byok-pgroot-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("create a temp dir under {base:?}: {e}"));
        // The postgres OS user runs the binaries from here.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().to_path_buf();
        let bin = under(&root, &sys.bindir);
        fs::create_dir_all(&bin).unwrap();
        for p in PROGRAMS {
            copy(&sys.bindir.join(p), &bin.join(p));
        }
        let pkglib = under(&root, &sys.pkglibdir);
        link_entries(&sys.pkglibdir, &pkglib, &[]);
        let share = under(&root, &sys.sharedir);
        link_entries(&sys.sharedir, &share, &["extension"]);
        let extension = share.join("extension");
        link_entries(&sys.sharedir.join("extension"), &extension, &[]);
        for d in [&root, &bin, &pkglib, &share, &extension] {
            make_traversable(&root, d);
        }

        let got = layout(&bin.join("pg_config"));
        assert!(
            got.bindir == bin && got.pkglibdir == pkglib && got.sharedir == share,
            "the copied Postgres binaries do not resolve their directories under {} \
             (bindir {}, pkglibdir {}, sharedir {}): this Postgres build is not relocatable",
            root.display(),
            got.bindir.display(),
            got.pkglibdir.display(),
            got.sharedir.display()
        );
        PgRoot {
            _tmp: tmp,
            bin,
            pkglib,
            extension,
        }
    }

    /// Directory of the root's server binaries (for
    /// [`crate::ClusterOptions::pg_bin_dir`]).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Copy `files` into the root's `stash/<name>/` now, so a later
    /// [`PgRoot::install_pg_byok`] installs them as they were (the system's
    /// install may be replaced meanwhile); returns the copies.
    pub fn stash(&self, name: &str, files: &[PathBuf]) -> Vec<PathBuf> {
        let dir = self._tmp.path().join("stash").join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        files
            .iter()
            .map(|f| {
                let dest = dir.join(f.file_name().unwrap());
                copy(f, &dest);
                dest
            })
            .collect()
    }

    /// Replace the root's pg_byok with the build in `files`: `pg_byok.so`,
    /// `pg_byok.control` and every `pg_byok--*.sql` among them. Run only
    /// while no cluster of this root is running.
    pub fn install_pg_byok(&self, files: &[PathBuf]) {
        for dir in [&self.pkglib, &self.extension] {
            for entry in fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                if is_pg_byok_file(&entry.file_name().to_string_lossy()) {
                    fs::remove_file(entry.path()).unwrap();
                }
            }
        }
        let (mut so, mut control) = (false, false);
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let dest = match name.as_str() {
                "pg_byok.so" => {
                    so = true;
                    self.pkglib.join(&name)
                }
                "pg_byok.control" => {
                    control = true;
                    self.extension.join(&name)
                }
                n if n.starts_with("pg_byok--") && n.ends_with(".sql") => self.extension.join(n),
                other => panic!("install_pg_byok: not a pg_byok file: {other}"),
            };
            copy(f, &dest);
        }
        assert!(
            so && control,
            "install_pg_byok: need pg_byok.so and pg_byok.control in {files:?}"
        );
    }
}

/// chmod 0755 every directory from `root` down to `dir` (tempdirs are 0700).
fn make_traversable(root: &Path, dir: &Path) {
    let mut d = dir.to_path_buf();
    loop {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        if d == root || !d.pop() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_byok_files_are_recognised() {
        for n in [
            "pg_byok.so",
            "pg_byok.control",
            "pg_byok--0.1.0.sql",
            "pg_byok--0.1.0--0.2.0.sql",
        ] {
            assert!(is_pg_byok_file(n), "{n}");
        }
        for n in [
            "plpgsql.so",
            "pg_byokx.so",
            "pgcrypto.control",
            "postgres.bki",
        ] {
            assert!(!is_pg_byok_file(n), "{n}");
        }
    }

    #[test]
    fn under_joins_absolute_paths() {
        assert_eq!(
            under(Path::new("/tmp/r"), Path::new("/usr/lib/postgresql/15/bin")),
            PathBuf::from("/tmp/r/usr/lib/postgresql/15/bin")
        );
    }
}
