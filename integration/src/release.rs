//! The two builds an upgrade test needs: an earlier release built from the
//! repository's history (`scripts/build-release.sh`, cached), and the new
//! build the test command installed into the system's Postgres.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::pg_bin;

/// The version this checkout builds (the workspace version).
pub const CURRENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The repository's root (this crate lives in `integration/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// The directory holding release `version`'s `pg_byok.so`,
/// `pg_byok.control` and `pg_byok--<version>.sql`: `BYOK_RELEASE_<version
/// with _ for .>_DIR` if set (e.g. `BYOK_RELEASE_0_1_0_DIR`), else what
/// `scripts/build-release.sh <version>` prints (it builds the release from
/// git history once, then answers from its cache).
pub fn release_dir(version: &str) -> PathBuf {
    let var = format!("BYOK_RELEASE_{}_DIR", version.replace('.', "_"));
    if let Some(dir) = std::env::var_os(&var) {
        return PathBuf::from(dir);
    }
    let script = repo_root().join("scripts/build-release.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(version)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} {version} failed ({}):\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or("").trim();
    assert!(!dir.is_empty(), "{} printed no directory", script.display());
    PathBuf::from(dir)
}

/// The files of release `version` in `dir`, checked to be there.
pub fn release_files(dir: &Path, version: &str) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = ["pg_byok.so", "pg_byok.control"]
        .iter()
        .map(|n| dir.join(n))
        .chain([dir.join(format!("pg_byok--{version}.sql"))])
        .collect();
    for f in &files {
        assert!(f.is_file(), "release {version}: {} is missing", f.display());
    }
    files
}

fn pg_config(what: &str) -> PathBuf {
    let out = Command::new(pg_bin("pg_config"))
        .arg(format!("--{what}"))
        .output()
        .unwrap_or_else(|e| panic!("run pg_config --{what}: {e}"));
    assert!(out.status.success(), "pg_config --{what} failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The new build's files, from the system install (`scripts/install-extension.sh`):
/// the library, the control file and every `pg_byok--*.sql` script.
pub fn installed_files() -> Vec<PathBuf> {
    let so = pg_config("pkglibdir").join("pg_byok.so");
    let ext = pg_config("sharedir").join("extension");
    let control = ext.join("pg_byok.control");
    for f in [&so, &control] {
        assert!(
            f.is_file(),
            "{} is missing: install the extension first (bash scripts/install-extension.sh)",
            f.display()
        );
    }
    let mut files = vec![so, control];
    let mut scripts: Vec<PathBuf> = fs::read_dir(&ext)
        .unwrap_or_else(|e| panic!("read {}: {e}", ext.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("pg_byok--") && n.ends_with(".sql")
        })
        .collect();
    scripts.sort();
    files.extend(scripts);
    files
}

/// `default_version` of a control file.
pub fn control_default_version(control: &Path) -> String {
    let text =
        fs::read_to_string(control).unwrap_or_else(|e| panic!("read {}: {e}", control.display()));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("default_version"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('\'').to_string())
        .next()
        .unwrap_or_else(|| panic!("{} has no default_version", control.display()))
}

/// The C symbols an extension script binds: every `'MODULE_PATHNAME', '<symbol>'`.
pub fn module_symbols(sql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = sql;
    while let Some(i) = rest.find("'MODULE_PATHNAME'") {
        rest = &rest[i + "'MODULE_PATHNAME'".len()..];
        let after_comma = rest.trim_start().strip_prefix(',').map(str::trim_start);
        if let Some(sym) = after_comma.and_then(|s| s.strip_prefix('\'')) {
            if let Some(end) = sym.find('\'') {
                out.insert(sym[..end].to_string());
            }
        }
    }
    out
}

/// The dynamic symbols a shared library defines (`nm -D --defined-only`).
pub fn exported_symbols(so: &Path) -> BTreeSet<String> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(so)
        .output()
        .unwrap_or_else(|e| panic!("run nm -D {} (binutils): {e}", so.display()));
    assert!(
        out.status.success(),
        "nm -D {} failed: {}",
        so.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_symbols_parses_pgrx_and_hand_written_forms() {
        let sql = "CREATE FUNCTION a() RETURNS int LANGUAGE c AS 'MODULE_PATHNAME', 'a_wrapper';\n\
                   CREATE FUNCTION b() RETURNS int STRICT LANGUAGE c /* Rust */\n\
                   AS 'MODULE_PATHNAME' ,\n  'b_wrapper';\n\
                   -- 'MODULE_PATHNAME' alone names no symbol\n";
        let got: Vec<String> = module_symbols(sql).into_iter().collect();
        assert_eq!(got, ["a_wrapper", "b_wrapper"]);
    }

    #[test]
    fn control_default_version_reads_quoted_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.control");
        fs::write(
            &p,
            "comment = 'x'\ndefault_version = '0.2.0'\nrelocatable = false\n",
        )
        .unwrap();
        assert_eq!(control_default_version(&p), "0.2.0");
    }
}
