//! The SQLSTATEs the extension's sources can raise, found by grepping sql/,
//! src/ and byok-core's error kinds, against API.md's SQLSTATE table.

use super::{is_sqlstate, ApiDoc, Raised};
use regex::Regex;
use std::collections::BTreeSet;
use std::path::Path;

fn files_under(dir: &Path, ext: &str, out: &mut Vec<std::path::PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// Every SQLSTATE the extension's sources can raise, with where: explicit
/// `ERRCODE = '…'` / `SQLSTATE '…'` / `RAISE condition` in sql/*.sql, a
/// `RAISE EXCEPTION '…'` without ERRCODE (P0001), `ERRCODE_*` names and
/// pgrx's `error!` (XX000) in src/, and the codes byok-core's error kinds
/// are documented to map to (core/src/error.rs).
pub fn raised_sqlstates(repo: &Path) -> Vec<(Raised, String)> {
    let mut found = Vec::new();
    let mut sql = Vec::new();
    files_under(&repo.join("sql"), "sql", &mut sql);
    sql.sort();
    let errcode = Regex::new(r"(?i)\b(?:ERRCODE\s*=\s*|SQLSTATE\s+)'([^']+)'").unwrap();
    let raise_cond =
        Regex::new(r"(?i)\bRAISE\s+(?:EXCEPTION\s+)?([a-z_][a-z0-9_]*)\s*(?:;|\bUSING\b)").unwrap();
    let raise_plain = Regex::new(r"(?i)\bRAISE\s+(?:EXCEPTION\s+)?'").unwrap();
    let levels = [
        "debug",
        "log",
        "info",
        "notice",
        "warning",
        "exception",
        "using",
        "sqlstate",
    ];
    for path in &sql {
        let text = std::fs::read_to_string(path).unwrap();
        let place = |offset: usize| {
            let line = text[..offset].matches('\n').count() + 1;
            format!(
                "{}:{line}",
                path.strip_prefix(repo).unwrap_or(path).display()
            )
        };
        for c in errcode.captures_iter(&text) {
            let v = c[1].to_string();
            let what = if is_sqlstate(&v) {
                Raised::Code(v)
            } else {
                Raised::Condition(v.to_lowercase())
            };
            found.push((what, place(c.get(1).unwrap().start())));
        }
        for c in raise_cond.captures_iter(&text) {
            let name = c[1].to_lowercase();
            if !levels.contains(&name.as_str()) {
                found.push((Raised::Condition(name), place(c.get(1).unwrap().start())));
            }
        }
        for m in raise_plain.find_iter(&text) {
            let statement = text[m.start()..].split(';').next().unwrap_or_default();
            if !statement.to_uppercase().contains("ERRCODE") {
                found.push((Raised::Code("P0001".into()), place(m.start())));
            }
        }
    }

    let mut rust = Vec::new();
    files_under(&repo.join("src"), "rs", &mut rust);
    rust.sort();
    let errcode_name = Regex::new(r"\bERRCODE_([A-Z0-9_]+)").unwrap();
    let error_macro = Regex::new(r"(?m)^[^/\n]*\berror!\(").unwrap();
    for path in &rust {
        let text = std::fs::read_to_string(path).unwrap();
        let rel = path
            .strip_prefix(repo)
            .unwrap_or(path)
            .display()
            .to_string();
        for (n, line) in text.lines().enumerate() {
            for c in errcode_name.captures_iter(line) {
                found.push((
                    Raised::Condition(c[1].to_lowercase()),
                    format!("{rel}:{}", n + 1),
                ));
            }
        }
        for m in error_macro.find_iter(&text) {
            let line = text[..m.start()].matches('\n').count() + 1;
            found.push((Raised::Code("XX000".into()), format!("{rel}:{line}")));
        }
    }

    let core_errors = repo.join("core/src/error.rs");
    let text = std::fs::read_to_string(&core_errors).unwrap();
    let core_code = Regex::new(r"SQLSTATE\s+([0-9A-Z]{5})\b").unwrap();
    for (n, line) in text.lines().enumerate() {
        for c in core_code.captures_iter(line) {
            if is_sqlstate(&c[1]) {
                found.push((
                    Raised::Code(c[1].to_string()),
                    format!("core/src/error.rs:{}", n + 1),
                ));
            }
        }
    }
    found
}

/// Raised SQLSTATEs missing from API.md's table, and table rows nothing raises.
pub fn check_raised(doc: &ApiDoc, raised: &[(Raised, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let codes: BTreeSet<&str> = doc.sqlstates.iter().map(|r| r.code.as_str()).collect();
    let conditions: BTreeSet<&str> = doc.sqlstates.iter().map(|r| r.condition.as_str()).collect();
    for (what, place) in raised {
        match what {
            Raised::Code(code) if !codes.contains(code.as_str()) => problems.push(format!(
                "{place} raises SQLSTATE {code}, which API.md's SQLSTATE table lacks. Add:\n    \
                 | `{code}` | <condition name> | <raised when> | <the hint> |{}",
                if code == "P0001" || code == "XX000" {
                    "\n    (or raise it with an explicit ERRCODE / through ExtError instead)"
                } else {
                    ""
                }
            )),
            Raised::Condition(name) if !conditions.contains(name.as_str()) => {
                problems.push(format!(
                "{place} raises condition {name}, which API.md's SQLSTATE table lacks. Add:\n    \
                 | `<its SQLSTATE>` | {name} | <raised when> | <the hint> |"
            ))
            }
            _ => {}
        }
    }
    for row in &doc.sqlstates {
        let used = raised.iter().any(|(what, _)| match what {
            Raised::Code(c) => *c == row.code,
            Raised::Condition(n) => *n == row.condition,
        });
        if !used {
            problems.push(format!(
                "API.md's SQLSTATE table lists {} ({}), which nothing in sql/, src/ or \
                 core/src/error.rs raises: remove the row",
                row.code, row.condition
            ));
        }
    }
    problems.dedup();
    problems
}
