//! Leak checks: which files hold given bytes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A hit of [`search`]: which needle was found in which file.
#[derive(Debug, Clone)]
pub struct Hit {
    pub file: PathBuf,
    /// The matched text (grep's longest match; may contain a needle).
    pub matched: String,
}

/// Every occurrence of any of `needles` in `paths` (files, or directories
/// searched recursively), by GNU grep (fixed strings, binary files as
/// text, devices and sockets skipped): one pass for all needles. Panics
/// if a path does not exist or grep reports an error, so a search never
/// passes by not looking.
pub fn search(paths: &[&Path], needles: &[String]) -> Vec<Hit> {
    assert!(
        needles.iter().all(|n| !n.is_empty() && !n.contains('\n')),
        "search: needles must be non-empty single lines"
    );
    assert!(
        !paths.is_empty() && !needles.is_empty(),
        "search: nothing to search"
    );
    for p in paths {
        assert!(p.exists(), "search: {} does not exist", p.display());
    }
    let mut patterns = tempfile::NamedTempFile::new().expect("create the needle file");
    patterns
        .write_all((needles.join("\n") + "\n").as_bytes())
        .expect("write the needle file");
    let out = Command::new("grep")
        .args(["-r", "-H", "-a", "-F", "-o", "-D", "skip", "-f"])
        .arg(patterns.path())
        .arg("--")
        .args(paths)
        .output()
        .expect("run grep");
    match out.status.code() {
        Some(0) | Some(1) => {}
        _ => panic!(
            "grep failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once(':'))
        .map(|(f, m)| Hit {
            file: PathBuf::from(f),
            matched: m.to_string(),
        })
        .collect()
}

/// Every regular file under `dir` (recursively; symlinks to files and to
/// directories followed to a bounded depth) whose contents contain `needle`.
/// Files that vanish while walking (Postgres temp files) are skipped; any
/// other I/O error panics, so a leak check never passes by not looking.
pub fn grep_dir(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    assert!(
        !needle.is_empty(),
        "grep_dir: empty needle matches everything"
    );
    let mut hits = Vec::new();
    walk(dir, needle, 0, &mut hits);
    hits.sort();
    hits
}

fn walk(dir: &Path, needle: &[u8], depth: usize, hits: &mut Vec<PathBuf>) {
    assert!(
        depth < 32,
        "grep_dir: directory nesting too deep at {}",
        dir.display()
    );
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => panic!("grep_dir: cannot list {}: {e}", dir.display()),
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("grep_dir: reading {}: {e}", dir.display()),
        };
        let path = entry.path();
        // fs::metadata follows symlinks (pg_wal or tablespaces may be links).
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("grep_dir: stat {}: {e}", path.display()),
        };
        if meta.is_dir() {
            walk(&path, needle, depth + 1, hits);
        } else if meta.is_file() {
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("grep_dir: read {}: {e}", path.display()),
            };
            if contains(&data, needle) {
                hits.push(path);
            }
        }
        // sockets, fifos: nothing to read
    }
}

/// Byte-substring search (first-byte scan, then compare).
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.len() > hay.len() {
        return false;
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return false,
            Some(off) => {
                let s = i + off;
                if &hay[s..s + needle.len()] == needle {
                    return true;
                }
                i = s + 1;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_works() {
        assert!(contains(b"abcdef", b"cde"));
        assert!(contains(b"abcdef", b"abcdef"));
        assert!(contains(b"aaab", b"aab"));
        assert!(contains(b"xxab", b"ab"));
        assert!(!contains(b"abcdef", b"abcdefg"));
        assert!(!contains(b"abcdef", b"ce"));
        assert!(!contains(b"", b"a"));
    }

    #[test]
    fn finds_files_recursively() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("a/b");
        fs::create_dir_all(&sub).unwrap();
        fs::write(d.path().join("top.bin"), b"\x00\x01secret-KEY\x02").unwrap();
        fs::write(sub.join("deep"), b"prefix secret-KEY").unwrap();
        fs::write(sub.join("other"), b"secret-KE").unwrap();
        fs::write(d.path().join("empty"), b"").unwrap();
        std::os::unix::fs::symlink(&sub, d.path().join("link")).unwrap();
        let hits = grep_dir(d.path(), b"secret-KEY");
        let rel: Vec<_> = hits
            .iter()
            .map(|p| {
                p.strip_prefix(d.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(rel, vec!["a/b/deep", "link/deep", "top.bin"]);
        assert!(grep_dir(d.path(), b"absent").is_empty());
        assert!(grep_dir(&d.path().join("missing"), b"x").is_empty());
    }

    #[test]
    fn search_finds_each_needle_in_files_and_directories() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        fs::create_dir_all(&sub).unwrap();
        fs::write(d.path().join("a.bin"), b"\x00xx-needle-one-xx\x01").unwrap();
        fs::write(sub.join("b.txt"), b"first line\nhas needle-two here\n").unwrap();
        fs::write(sub.join("c.txt"), b"needle-on").unwrap();
        let needles = vec!["needle-one".to_string(), "needle-two".to_string()];
        let mut hits: Vec<(String, String)> = search(&[d.path()], &needles)
            .into_iter()
            .map(|h| {
                let rel = h.file.strip_prefix(d.path()).unwrap();
                (rel.to_string_lossy().into_owned(), h.matched)
            })
            .collect();
        hits.sort();
        assert_eq!(
            hits,
            vec![
                ("a.bin".to_string(), "needle-one".to_string()),
                ("sub/b.txt".to_string(), "needle-two".to_string()),
            ]
        );
        // A single file as the path.
        let one = search(&[&sub.join("b.txt")], &needles);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].file, sub.join("b.txt"));
        assert!(search(&[&sub], &["absent".to_string()]).is_empty());
    }

    #[test]
    #[should_panic(expected = "does not exist")]
    fn search_refuses_a_missing_path() {
        let d = tempfile::tempdir().unwrap();
        search(&[&d.path().join("gone")], &["x".to_string()]);
    }
}
