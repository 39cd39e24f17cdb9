//! The repository's documents stand alone and describe the tree as it is:
//! [`link_problems`] finds links that leave the repository or point at a
//! missing file or heading; [`layout_problems`] holds the layout block of
//! docs/ARCHITECTURE.md against the files present.

use regex::Regex;
use std::collections::BTreeSet;
use std::path::Path;

/// Folders never walked: build output and VCS data.
const SKIPPED: &[&str] = &["target", ".git"];

/// Every file and folder under `root` as a `/`-separated relative path
/// (folders end in `/`), skipping [`SKIPPED`].
pub fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if SKIPPED.contains(&name.as_str()) {
                continue;
            }
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if entry.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to `-`.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The text outside fenced code blocks and inline code spans.
fn prose(text: &str) -> String {
    let span = Regex::new("`[^`\n]*`").unwrap();
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if !fenced {
            out.push_str(&span.replace_all(line, "``"));
        }
        out.push('\n');
    }
    out
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| anchor_of(h.trim_start_matches('#')))
        .collect()
}

/// Resolve `target` relative to the folder `from_dir` ("" for the root),
/// `None` when it climbs out of the repository.
fn resolve(from_dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = from_dir.split('/').filter(|p| !p.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Every link in the repository's Markdown files that does not lead to a
/// file (and heading) inside the repository, as "file: link: why".
pub fn link_problems(root: &Path) -> Vec<String> {
    let inline = Regex::new(r#"\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)"#).unwrap();
    let reference = Regex::new(r"(?m)^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)").unwrap();
    let auto = Regex::new(r"<([a-z][a-z0-9+.-]*:[^>\s]+)>").unwrap();
    let scheme = Regex::new(r"^[a-zA-Z][a-zA-Z0-9+.-]*:").unwrap();
    let files = tree(root);
    let mut problems = Vec::new();
    for doc in files.iter().filter(|f| f.ends_with(".md")) {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let dir = doc.rsplit_once('/').map_or("", |(d, _)| d);
        let body = prose(&text);
        let targets = inline
            .captures_iter(&body)
            .chain(reference.captures_iter(&body))
            .chain(auto.captures_iter(&body))
            .map(|c| c[1].to_string());
        for target in targets {
            if scheme.is_match(&target) {
                problems.push(format!(
                    "{doc}: link {target} leaves the repository: put what the reader needs into \
                     the repository's own documents and link there"
                ));
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                Some(doc.clone())
            } else {
                resolve(dir, path)
            };
            let Some(file) = file else {
                problems.push(format!(
                    "{doc}: link {target} climbs out of the repository: link a document inside it"
                ));
                continue;
            };
            let is_dir = files.contains(&format!("{file}/")) || file.is_empty();
            if !files.contains(&file) && !is_dir {
                problems.push(format!(
                    "{doc}: link {target} points at {file}, which does not exist"
                ));
                continue;
            }
            if let (Some(anchor), false) = (anchor, is_dir) {
                let target_text = std::fs::read_to_string(root.join(&file)).unwrap();
                if file.ends_with(".md") && !anchors(&target_text).contains(anchor) {
                    problems.push(format!(
                        "{doc}: link {target}: {file} has no heading whose anchor is #{anchor}"
                    ));
                }
            }
        }
    }
    problems
}

/// The paths named in the first code block under `## Layout`: one entry a
/// line, children indented by two spaces under their folder; lines indented
/// 12 or more spaces continue the description above them.
pub fn layout_entries(architecture: &str) -> Vec<String> {
    let mut lines = architecture
        .lines()
        .skip_while(|l| l.trim() != "## Layout")
        .skip_while(|l| !l.starts_with("```"))
        .skip(1);
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in lines.by_ref() {
        if line.starts_with("```") {
            break;
        }
        let indent = line.len() - line.trim_start().len();
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if indent >= 12 {
            continue;
        }
        let level = indent / 2;
        stack.truncate(level);
        let path = format!("{}{name}", stack.concat());
        if name.ends_with('/') {
            stack.push(name.to_string());
        }
        out.push(path);
    }
    out
}

/// What the layout must name: every top-level entry and every folder one
/// level below (hidden ones excepted), and every file of `src/`, `sql/`,
/// `docs/` and their subfolders.
pub fn required_entries(tree: &BTreeSet<String>) -> BTreeSet<String> {
    tree.iter()
        .filter(|p| !p.split('/').any(|part| part.starts_with('.')))
        .filter(|p| {
            let depth = p.trim_end_matches('/').matches('/').count();
            depth == 0
                || (depth == 1 && p.ends_with('/'))
                || ["src/", "sql/", "docs/"].iter().any(|d| p.starts_with(d))
        })
        .cloned()
        .collect()
}

/// Paths the layout names that do not exist, and required paths it omits.
pub fn layout_problems(entries: &[String], tree: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for e in entries {
        if !tree.contains(e) {
            problems.push(format!(
                "docs/ARCHITECTURE.md's layout names {e}, which does not exist: remove or rename its line"
            ));
        }
    }
    let named: BTreeSet<&str> = entries.iter().map(String::as_str).collect();
    for r in required_entries(tree) {
        if !named.contains(r.as_str()) {
            let depth = r.trim_end_matches('/').matches('/').count();
            let name = r.trim_end_matches('/').rsplit('/').next().unwrap_or(&r);
            let suffix = if r.ends_with('/') { "/" } else { "" };
            problems.push(format!(
                "{r} is not in docs/ARCHITECTURE.md's layout: add, under its folder, the line\n    {}{name}{suffix}  <what it holds>",
                "  ".repeat(depth)
            ));
        }
    }
    problems
}
