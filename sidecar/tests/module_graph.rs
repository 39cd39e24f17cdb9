//! No import cycles in the sidecar or the mock vendor: the module graph read
//! from the sources (a `crate::<module>` outside comments and test code is
//! an edge; `classify/vendor_error.rs` belongs to `classify`) is acyclic,
//! and the loop (`worker`) and the per-job code (`task`) meet only in
//! `state`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap().with_extension("");
        let from = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let name = rel.to_string_lossy();
        if matches!(from.as_str(), "lib" | "main") || name.ends_with("tests") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = edges.entry(from.clone()).or_default();
        for line in code.lines() {
            let line = line.split("//").next().unwrap();
            let mut targets: Vec<String> = Vec::new();
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    // `use crate::{a, b::C};`
                    let group = group.split('}').next().unwrap();
                    targets.extend(
                        group
                            .split(',')
                            .map(|p| p.trim().split("::").next().unwrap().to_owned()),
                    );
                } else {
                    targets.push(
                        rest.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect(),
                    );
                }
            }
            for t in targets {
                if !t.is_empty() && t != from {
                    deps.insert(t);
                }
            }
        }
    }
    edges
}

/// A cycle through `from`, if any (depth-first search).
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(g: &Graph, n: &str, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> bool {
        if let Some(at) = path.iter().position(|p| p == n) {
            path.drain(..at);
            path.push(n.to_owned());
            return true;
        }
        if done.contains(n) {
            return false;
        }
        path.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            if visit(g, d, path, done) {
                return true;
            }
        }
        path.pop();
        done.insert(n.to_owned());
        false
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        let mut path = Vec::new();
        if visit(g, n, &mut path, &mut done) {
            return Some(path);
        }
    }
    None
}

fn crate_src(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join("src")
}

#[test]
fn the_sidecar_has_no_import_cycles() {
    let g = graph(&crate_src("."));
    assert!(
        g["task"].contains("state") && g["worker"].contains("task"),
        "{g:?}"
    );
    assert_eq!(cycle(&g), None, "{g:?}");
    assert!(
        !g["task"].contains("worker"),
        "a job's path goes back to the loop: {g:?}"
    );
    assert!(
        !g.contains_key("mock"),
        "the mock vendor is back in the sidecar"
    );
}

#[test]
fn the_mock_vendor_has_no_import_cycles() {
    let g = graph(&crate_src("../mock-vendor"));
    assert!(g["anthropic"].contains("state"), "{g:?}");
    assert_eq!(cycle(&g), None, "{g:?}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    g.get_mut("c").unwrap().clear();
    assert_eq!(cycle(&g), None);
}
