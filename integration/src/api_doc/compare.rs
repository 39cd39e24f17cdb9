//! Every difference between API.md and a catalog, each phrased as what to
//! write in API.md (whole sections for what is missing).

use super::{ApiDoc, Catalog, Function, RelKind, Relation, Setting};
use std::collections::BTreeSet;
use std::fmt::Write as _;

fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "(none)".to_string()
    } else {
        set.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn callers_line(callers: &BTreeSet<String>) -> String {
    if callers.is_empty() {
        "- Callers: superusers only".to_string()
    } else {
        format!("- Callers: {}", list(callers))
    }
}

fn readers_line(readers: &BTreeSet<String>) -> String {
    if readers.is_empty() {
        "- Readers: none".to_string()
    } else {
        format!("- Readers: {}", list(readers))
    }
}

/// The section API.md needs for a function it lacks.
pub fn function_section(f: &Function) -> String {
    let mut s = format!(
        "### {}\n\n<what it does and when to call it>\n\n- Returns: `{}`\n",
        f.signature, f.result
    );
    if !f.defaults.is_empty() {
        writeln!(s, "- Defaults: {}", list(&f.defaults)).unwrap();
    }
    writeln!(s, "{}", callers_line(&f.callers)).unwrap();
    s.push_str("- Errors:\n  - `<SQLSTATE>`: <when>.\n");
    s
}

/// The section API.md needs for a view, table or type it lacks.
pub fn relation_section(r: &Relation) -> String {
    let mut s = format!(
        "### {} {}\n\n<what it holds>\n\n- Columns: `{}`\n",
        r.kind.word(),
        r.name,
        r.columns
    );
    if r.kind != RelKind::Type {
        writeln!(s, "{}", readers_line(&r.readers)).unwrap();
    }
    s
}

fn setting_row(s: &Setting) -> String {
    let default = if s.default == "(none)" {
        s.default.clone()
    } else {
        format!("`{}`", s.default)
    };
    format!(
        "| `{}` | {} | {} | {} | {} | <meaning> |",
        s.name, s.vartype, s.range, default, s.context
    )
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Every difference between API.md and the installed extension, each as an
/// instruction for API.md. Empty when they agree.
pub fn compare(doc: &ApiDoc, cat: &Catalog) -> Vec<String> {
    let mut problems = Vec::new();

    for f in &cat.functions {
        match doc.function(&f.signature) {
            None => problems.push(format!(
                "function {} is installed but not documented. Add to docs/API.md:\n{}",
                f.signature,
                indent(&function_section(f))
            )),
            Some(d) => {
                if d.result != f.result {
                    problems.push(format!(
                        "### {}: the function returns `{}`, API.md says `{}`. Write:\n    - Returns: `{}`",
                        f.signature, f.result, d.result, f.result
                    ));
                }
                if d.defaults != f.defaults {
                    problems.push(format!(
                        "### {}: the argument defaults are {}, API.md says {}. Write:\n    - Defaults: {}",
                        f.signature,
                        list(&f.defaults),
                        list(&d.defaults),
                        list(&f.defaults)
                    ));
                }
                if d.callers != f.callers {
                    problems.push(format!(
                        "### {}: EXECUTE is granted to {}, API.md says {}. Write:\n    {}",
                        f.signature,
                        list(&f.callers),
                        list(&d.callers),
                        callers_line(&f.callers)
                    ));
                }
            }
        }
    }
    for d in &doc.functions {
        if !cat.functions.iter().any(|f| f.signature == d.signature) {
            let bare = d.signature.split('(').next().unwrap_or_default();
            let same_name: Vec<&str> = cat
                .functions
                .iter()
                .filter(|f| f.signature.split('(').next() == Some(bare))
                .map(|f| f.signature.as_str())
                .collect();
            problems.push(if same_name.is_empty() {
                format!(
                    "API.md documents ### {}, which is not installed (or is internal): remove its section",
                    d.signature
                )
            } else {
                format!(
                    "API.md documents ### {}, but the installed function is {}: fix the heading's \
                     argument list (as pg_get_function_identity_arguments prints it)",
                    d.signature,
                    same_name.join(" and ")
                )
            });
        }
    }

    for r in &cat.relations {
        let heading = format!("{} {}", r.kind.word(), r.name);
        match doc.relation(r.kind, &r.name) {
            None => problems.push(format!(
                "{heading} is installed but not documented. Add to docs/API.md:\n{}",
                indent(&relation_section(r))
            )),
            Some(d) => {
                if d.columns != r.columns {
                    problems.push(format!(
                        "### {heading}: its columns are `{}`, API.md says `{}`. Write:\n    - Columns: `{}`",
                        r.columns, d.columns, r.columns
                    ));
                }
                if r.kind != RelKind::Type && d.readers != r.readers {
                    problems.push(format!(
                        "### {heading}: SELECT is granted to {}, API.md says {}. Write:\n    {}",
                        list(&r.readers),
                        list(&d.readers),
                        readers_line(&r.readers)
                    ));
                }
            }
        }
    }
    for d in &doc.relations {
        if cat.relation(d.kind, &d.name).is_none() {
            problems.push(format!(
                "API.md documents ### {} {}, which is not installed: remove its section",
                d.kind.word(),
                d.name
            ));
        }
    }

    for role in &cat.created_roles {
        match doc.roles.get(role) {
            Some(true) => {}
            Some(false) => problems.push(format!(
                "role {role} is created by pg_byok, but API.md's roles table says it is not: \
                 write `yes` in its \"created by pg_byok\" cell"
            )),
            None => problems.push(format!(
                "role {role} is created by pg_byok but not in API.md's roles table. Add the row:\n    \
                 | `{role}` | yes | <what it may do> |"
            )),
        }
    }
    for (role, created) in &doc.roles {
        if *created && !cat.created_roles.contains(role) {
            problems.push(format!(
                "API.md's roles table says pg_byok creates {role}, but no such role exists after \
                 CREATE EXTENSION: remove the row or write `no (…)` in its second cell"
            ));
        }
    }
    for role in &cat.grantees {
        if !doc.roles.contains_key(role) {
            problems.push(format!(
                "role {role} is granted privileges in schema byok but is not in API.md's roles \
                 table. Add the row:\n    | `{role}` | no | <what it may do> |"
            ));
        }
    }

    for s in &cat.settings {
        match doc.settings.iter().find(|d| d.name == s.name) {
            None => problems.push(format!(
                "setting {} exists but is not in API.md's settings table. Add the row:\n    {}",
                s.name,
                setting_row(s)
            )),
            Some(d) if d != s => problems.push(format!(
                "setting {}: API.md's row says type {}, range {}, default {}, context {}; the server \
                 has type {}, range {}, default {}, context {}. Write:\n    {}",
                s.name,
                d.vartype,
                d.range,
                d.default,
                d.context,
                s.vartype,
                s.range,
                s.default,
                s.context,
                setting_row(s)
            )),
            Some(_) => {}
        }
    }
    for d in &doc.settings {
        if !cat.settings.iter().any(|s| s.name == d.name) {
            problems.push(format!(
                "API.md's settings table lists {}, which the server does not have: remove the row",
                d.name
            ));
        }
    }

    let table_codes: BTreeSet<&str> = doc.sqlstates.iter().map(|r| r.code.as_str()).collect();
    for (code, heading) in &doc.cited_sqlstates {
        if !table_codes.contains(code.as_str()) {
            problems.push(format!(
                "### {heading} cites SQLSTATE {code}, which API.md's SQLSTATE table lacks. Add:\n    \
                 | `{code}` | <condition name> | <raised when> | <the hint> |"
            ));
        }
    }
    for row in &doc.sqlstates {
        match cat.conditions.get(&row.condition) {
            Some(code) if *code == row.code => {}
            Some(code) => problems.push(format!(
                "API.md's SQLSTATE table pairs {} with condition {}, which is SQLSTATE {code}: fix the row",
                row.code, row.condition
            )),
            None => problems.push(format!(
                "API.md's SQLSTATE table names condition {:?} for {}, which Postgres does not know: \
                 write the condition name from the PostgreSQL manual's Appendix A",
                row.condition, row.code
            )),
        }
    }
    problems
}
