//! The module graph of byok-core has no cycles, and the error module is a
//! leaf over `Vendor` (a leaf itself), so any module can return `CoreError`.
//! Read from the sources: a `crate::<module>` anywhere in a file (a `use` or
//! a path) is an edge; comments are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap().with_extension("");
    // `classify/vendor_error.rs` belongs to `classify`.
    rel.components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let from = module_of(&file, &src);
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = edges.entry(from.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != from && !name.is_empty() {
                    deps.insert(name);
                }
            }
        }
    }
    edges
}

#[test]
fn error_uses_only_the_vendor_enum_and_vendor_uses_nothing() {
    let g = graph();
    assert_eq!(g["error"], BTreeSet::from(["vendor".to_owned()]));
    assert!(g["vendor"].is_empty(), "{:?}", g["vendor"]);
}

#[test]
fn no_import_cycles() {
    let g = graph();
    assert!(g.len() >= 10, "modules found: {:?}", g.keys());
    // Depth-first search for a back edge.
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("import cycle: {} → {m}", path[at..].join(" → "));
        }
        path.push(m.to_owned());
        for dep in g.get(m).into_iter().flatten() {
            visit(g, dep, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(&g, m, &mut Vec::new(), &mut done);
    }
}
