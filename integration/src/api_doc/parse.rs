//! Reading docs/API.md: headings open objects, `- Returns:` / `- Callers:` /
//! `- Columns:` … lines fill them, and the roles, settings and SQLSTATE
//! tables are read row by row.

use super::{is_sqlstate, ticked, ApiDoc, Function, RelKind, Relation, Setting, SqlstateRow};
use regex::Regex;
use std::collections::BTreeSet;

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .split('|')
        .map(|c| c.trim().trim_matches('`').trim().to_string())
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Table {
    None,
    Roles,
    Settings,
    Sqlstates,
    Other,
}

/// The object a `### ` heading opens, filled in from the lines under it.
enum Open {
    Function(Function, [bool; 2]),
    Relation(Relation, [bool; 2]),
}

impl ApiDoc {
    /// Parse API.md; `Err` lists the lines that break its stated format.
    pub fn parse(text: &str) -> Result<ApiDoc, Vec<String>> {
        let func_re = Regex::new(r"^([a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*)\((.*)\)$").unwrap();
        let rel_re =
            Regex::new(r"^(view|table|type) ([a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*)$").unwrap();
        let mut doc = ApiDoc::default();
        let mut errors = Vec::new();
        let mut open: Option<(Open, String, usize)> = None;
        let mut table = Table::None;
        let mut fenced = false;

        let close = |open: &mut Option<(Open, String, usize)>,
                     doc: &mut ApiDoc,
                     errors: &mut Vec<String>| {
            let Some((obj, heading, line)) = open.take() else {
                return;
            };
            match obj {
                Open::Function(f, [returns, callers]) => {
                    if !returns {
                        errors.push(format!(
                            "API.md line {line}: `### {heading}` has no `- Returns:` line"
                        ));
                    }
                    if !callers {
                        errors.push(format!(
                            "API.md line {line}: `### {heading}` has no `- Callers:` line"
                        ));
                    }
                    doc.functions.push(f);
                }
                Open::Relation(r, [columns, readers]) => {
                    if !columns {
                        errors.push(format!(
                            "API.md line {line}: `### {heading}` has no `- Columns:` line"
                        ));
                    }
                    if !readers && r.kind != RelKind::Type {
                        errors.push(format!(
                            "API.md line {line}: `### {heading}` has no `- Readers:` line"
                        ));
                    }
                    doc.relations.push(r);
                }
            }
        };

        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim_end();
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if fenced {
                continue;
            }
            if line.starts_with('#') {
                close(&mut open, &mut doc, &mut errors);
                table = Table::None;
                if let Some(h) = line.strip_prefix("### ") {
                    let h = h.trim();
                    if let Some(c) = func_re.captures(h) {
                        let f = Function {
                            signature: format!("{}({})", &c[1], &c[2]),
                            result: String::new(),
                            defaults: BTreeSet::new(),
                            callers: BTreeSet::new(),
                        };
                        open = Some((Open::Function(f, [false; 2]), h.to_string(), n));
                    } else if let Some(c) = rel_re.captures(h) {
                        let kind = match &c[1] {
                            "view" => RelKind::View,
                            "table" => RelKind::Table,
                            _ => RelKind::Type,
                        };
                        let r = Relation {
                            kind,
                            name: c[2].to_string(),
                            columns: String::new(),
                            readers: BTreeSet::new(),
                        };
                        open = Some((Open::Relation(r, [false; 2]), h.to_string(), n));
                    } else {
                        errors.push(format!(
                            "API.md line {n}: `### {h}` is neither `### schema.function(arguments)` \
                             nor `### view|table|type schema.name`"
                        ));
                    }
                }
                continue;
            }

            if line.starts_with('|') {
                let row = cells(line);
                if table == Table::None {
                    table = match row.first().map(String::as_str) {
                        Some("role") => Table::Roles,
                        Some("setting") => Table::Settings,
                        Some("SQLSTATE") => Table::Sqlstates,
                        _ => Table::Other,
                    };
                    continue;
                }
                if row
                    .iter()
                    .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
                {
                    continue;
                }
                match table {
                    Table::Roles if row.len() >= 2 => {
                        doc.roles.insert(row[0].clone(), row[1].starts_with("yes"));
                    }
                    Table::Settings if row.len() >= 5 => doc.settings.push(Setting {
                        name: row[0].clone(),
                        vartype: row[1].clone(),
                        range: row[2].clone(),
                        default: row[3].clone(),
                        context: row[4].clone(),
                    }),
                    Table::Sqlstates if row.len() >= 2 => doc.sqlstates.push(SqlstateRow {
                        code: row[0].clone(),
                        condition: row[1].clone(),
                    }),
                    Table::Roles | Table::Settings | Table::Sqlstates => {
                        errors.push(format!("API.md line {n}: table row has too few cells"))
                    }
                    Table::None | Table::Other => {}
                }
                continue;
            }
            table = Table::None;

            let Some((obj, heading, _)) = open.as_mut() else {
                continue;
            };
            for t in ticked(line) {
                if is_sqlstate(&t) {
                    doc.cited_sqlstates.push((t, heading.clone()));
                }
            }
            let item = line.trim_start();
            match obj {
                Open::Function(f, seen) => {
                    if let Some(rest) = item.strip_prefix("- Returns:") {
                        f.result = ticked(rest).into_iter().next().unwrap_or_default();
                        seen[0] = true;
                    } else if let Some(rest) = item.strip_prefix("- Defaults:") {
                        f.defaults = ticked(rest).into_iter().collect();
                    } else if let Some(rest) = item.strip_prefix("- Callers:") {
                        f.callers = ticked(rest).into_iter().collect();
                        seen[1] = true;
                    }
                }
                Open::Relation(r, seen) => {
                    if let Some(rest) = item.strip_prefix("- Columns:") {
                        r.columns = ticked(rest).into_iter().next().unwrap_or_default();
                        seen[0] = true;
                    } else if let Some(rest) = item.strip_prefix("- Readers:") {
                        r.readers = ticked(rest).into_iter().collect();
                        seen[1] = true;
                    }
                }
            }
        }
        close(&mut open, &mut doc, &mut errors);

        let mut seen = BTreeSet::new();
        for name in doc.functions.iter().map(|f| f.signature.clone()).chain(
            doc.relations
                .iter()
                .map(|r| format!("{} {}", r.kind.word(), r.name)),
        ) {
            if !seen.insert(name.clone()) {
                errors.push(format!("API.md documents `{name}` twice"));
            }
        }
        if errors.is_empty() {
            Ok(doc)
        } else {
            Err(errors)
        }
    }

    pub(super) fn function(&self, signature: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.signature == signature)
    }

    pub(super) fn relation(&self, kind: RelKind, name: &str) -> Option<&Relation> {
        self.relations
            .iter()
            .find(|r| r.kind == kind && r.name == name)
    }
}
