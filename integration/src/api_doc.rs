//! docs/API.md against the installed extension and the sources.
//!
//! [`ApiDoc::parse`] reads the reference (its format is stated at the top of
//! API.md); [`Catalog::read`] reads the same facts from a database where
//! pg_byok is installed; [`compare`] lists every difference as a sentence
//! that says what to write in API.md. [`raised_sqlstates`] greps the sources
//! for the SQLSTATEs pg_byok can raise and [`check_raised`] holds them
//! against the SQLSTATE table. Doc and catalog share one set of types, so a
//! catalog can also be built from a doc ([`Catalog::from_doc`]) to show that
//! every check fails when the two disagree.

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// One function, as API.md states it or as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// `schema.name(identity arguments)`.
    pub signature: String,
    /// As `pg_get_function_result` prints it.
    pub result: String,
    /// `name => value` for each argument with a default (value without its cast).
    pub defaults: BTreeSet<String>,
    /// Roles granted EXECUTE, other than the owner (`PUBLIC` for PUBLIC).
    pub callers: BTreeSet<String>,
}

/// `view`, `table` or `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RelKind {
    View,
    Table,
    Type,
}

impl RelKind {
    pub fn word(self) -> &'static str {
        match self {
            RelKind::View => "view",
            RelKind::Table => "table",
            RelKind::Type => "type",
        }
    }
}

/// A view, table or composite type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub kind: RelKind,
    /// `schema.name`.
    pub name: String,
    /// `name type, …` in column order.
    pub columns: String,
    /// Roles that may SELECT it or one of its columns (not for types).
    pub readers: BTreeSet<String>,
}

/// A `byok.*` setting, in the terms of API.md's settings table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    /// `pg_settings.vartype`.
    pub vartype: String,
    /// `min..max`, or `—` for a setting without a range.
    pub range: String,
    /// The boot value, or `(none)`.
    pub default: String,
    /// `pg_settings.context`.
    pub context: String,
}

/// One row of API.md's SQLSTATE table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlstateRow {
    pub code: String,
    pub condition: String,
}

/// What docs/API.md says.
#[derive(Debug, Clone, Default)]
pub struct ApiDoc {
    pub functions: Vec<Function>,
    pub relations: Vec<Relation>,
    /// Role name → whether pg_byok creates it.
    pub roles: BTreeMap<String, bool>,
    pub settings: Vec<Setting>,
    pub sqlstates: Vec<SqlstateRow>,
    /// SQLSTATEs named in an object's section, with the heading they are under.
    pub cited_sqlstates: Vec<(String, String)>,
}

/// What the installed extension has.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Public functions: in schema byok and not `_`-prefixed, or granted to a role.
    pub functions: Vec<Function>,
    pub relations: Vec<Relation>,
    /// Roles pg_byok creates (`byok_*`, or commented `pg_byok: …`).
    pub created_roles: BTreeSet<String>,
    /// Every role granted anything on schema byok or an object in it.
    pub grantees: BTreeSet<String>,
    pub settings: Vec<Setting>,
    /// Condition name → SQLSTATE, as the server resolves the table's names.
    pub conditions: BTreeMap<String, String>,
}

/// Where a source raises a SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raised {
    /// A five-character code.
    Code(String),
    /// A condition name (`invalid_parameter_value`).
    Condition(String),
}

fn ticked(line: &str) -> Vec<String> {
    let re = Regex::new("`([^`]+)`").unwrap();
    re.captures_iter(line).map(|c| c[1].to_string()).collect()
}

fn is_sqlstate(s: &str) -> bool {
    s.len() == 5
        && s.chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        && s.chars().any(|c| c.is_ascii_digit())
}

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

    fn function(&self, signature: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.signature == signature)
    }

    fn relation(&self, kind: RelKind, name: &str) -> Option<&Relation> {
        self.relations
            .iter()
            .find(|r| r.kind == kind && r.name == name)
    }
}

/// Split `pg_get_function_arguments` output at its top-level commas.
fn split_arguments(args: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut depth) = (Vec::new(), String::new(), false, 0i32);
    for ch in args.chars() {
        match ch {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// `name => value` for each defaulted argument in `pg_get_function_arguments`
/// output, the value without its trailing cast (`NULL::text` → `NULL`).
pub fn defaults_of(arguments: &str) -> BTreeSet<String> {
    let cast = Regex::new(r"::[a-z][a-z0-9_ ]*(\[\])?$").unwrap();
    split_arguments(arguments)
        .into_iter()
        .filter_map(|arg| {
            let (decl, value) = arg.split_once(" DEFAULT ")?;
            let mut words = decl.split_whitespace();
            let mut name = words.next()?;
            if matches!(name, "IN" | "OUT" | "INOUT" | "VARIADIC") {
                name = words.next()?;
            }
            Some(format!("{name} => {}", cast.replace(value.trim(), "")))
        })
        .collect()
}

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

impl Catalog {
    /// The catalog API.md describes, taken at its word: compare(doc,
    /// from_doc(doc)) finds nothing, so a test can alter one side and see
    /// the check fail.
    pub fn from_doc(doc: &ApiDoc) -> Catalog {
        Catalog {
            functions: doc.functions.clone(),
            relations: doc.relations.clone(),
            created_roles: doc
                .roles
                .iter()
                .filter(|(_, c)| **c)
                .map(|(r, _)| r.clone())
                .collect(),
            grantees: doc.roles.keys().cloned().collect(),
            settings: doc.settings.clone(),
            conditions: doc
                .sqlstates
                .iter()
                .map(|r| (r.condition.clone(), r.code.clone()))
                .collect(),
        }
    }

    /// Read the facts from a database where pg_byok is installed, as a
    /// superuser. `conditions_to_resolve` are the condition names to look up
    /// (API.md's SQLSTATE table's).
    pub fn read(
        db: &mut postgres::Client,
        conditions_to_resolve: &[String],
    ) -> Result<Catalog, postgres::Error> {
        // Qualified type names in every printout, whatever the session had.
        db.batch_execute("SET search_path = pg_catalog")?;
        let mut cat = Catalog::default();
        const MEMBER: &str = "EXISTS (SELECT 1 FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid \
             WHERE e.extname = 'pg_byok' AND d.deptype = 'e' AND d.classid = $1::regclass AND d.objid = $2)";
        let grantee = "CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE x.grantee::regrole::text END";

        let sql = format!(
            "SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
                    pg_get_function_result(p.oid), pg_get_function_arguments(p.oid),
                    n.nspname = 'byok' AND p.proname LIKE '\\_%',
                    ARRAY(SELECT DISTINCT {grantee}
                            FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) x
                           WHERE x.privilege_type = 'EXECUTE' AND x.grantee <> p.proowner)
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'byok' OR {}",
            MEMBER.replace("$1", "'pg_proc'").replace("$2", "p.oid")
        );
        for row in db.query(sql.as_str(), &[])? {
            let internal: bool = row.get(3);
            let callers: Vec<String> = row.get(4);
            if internal && callers.is_empty() {
                continue;
            }
            cat.functions.push(Function {
                signature: row.get(0),
                result: row.get(1),
                defaults: defaults_of(row.get(2)),
                callers: callers.into_iter().collect(),
            });
        }

        let sql = format!(
            "SELECT c.relkind::text, n.nspname || '.' || c.relname,
                    coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                                                ORDER BY a.attnum)
                                FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                                 AND NOT a.attisdropped), ''),
                    ARRAY(SELECT DISTINCT {grantee} FROM (
                              SELECT (aclexplode(c.relacl)).*
                              UNION ALL
                              SELECT (aclexplode(a.attacl)).* FROM pg_attribute a
                               WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL) x
                           WHERE x.privilege_type = 'SELECT' AND x.grantee <> c.relowner)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'v', 'm', 'c', 'f')
                AND (n.nspname = 'byok' OR {} OR {})",
            MEMBER.replace("$1", "'pg_class'").replace("$2", "c.oid"),
            MEMBER.replace("$1", "'pg_type'").replace("$2", "c.reltype")
        );
        for row in db.query(sql.as_str(), &[])? {
            let kind = match row.get::<_, String>(0).as_str() {
                "v" | "m" => RelKind::View,
                "c" => RelKind::Type,
                _ => RelKind::Table,
            };
            let readers: Vec<String> = row.get(3);
            cat.relations.push(Relation {
                kind,
                name: row.get(1),
                columns: row.get(2),
                readers: if kind == RelKind::Type {
                    BTreeSet::new()
                } else {
                    readers.into_iter().collect()
                },
            });
        }

        for row in db.query(
            "SELECT rolname::text FROM pg_roles
              WHERE rolname LIKE 'byok\\_%'
                 OR coalesce(shobj_description(oid, 'pg_authid'), '') LIKE 'pg\\_byok:%'",
            &[],
        )? {
            cat.created_roles.insert(row.get(0));
        }
        cat.grantees
            .extend(cat.functions.iter().flat_map(|f| f.callers.iter().cloned()));
        cat.grantees
            .extend(cat.relations.iter().flat_map(|r| r.readers.iter().cloned()));
        let sql = format!(
            "SELECT DISTINCT {grantee} FROM pg_namespace n, aclexplode(n.nspacl) x
              WHERE n.nspname = 'byok' AND x.grantee <> n.nspowner"
        );
        for row in db.query(sql.as_str(), &[])? {
            cat.grantees.insert(row.get(0));
        }

        for row in db.query(
            "SELECT name, vartype, min_val, max_val, boot_val, context FROM pg_settings
              WHERE name LIKE 'byok.%' ORDER BY name",
            &[],
        )? {
            let min: Option<String> = row.get(2);
            let max: Option<String> = row.get(3);
            let boot: Option<String> = row.get(4);
            cat.settings.push(Setting {
                name: row.get(0),
                vartype: row.get(1),
                range: match (min, max) {
                    (Some(a), Some(b)) if !a.is_empty() => format!("{a}..{b}"),
                    _ => "—".to_string(),
                },
                default: boot
                    .filter(|b| !b.is_empty())
                    .unwrap_or_else(|| "(none)".to_string()),
                context: row.get(5),
            });
        }

        db.batch_execute(
            "CREATE FUNCTION pg_temp.sqlstate_of(condition text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN
                 RAISE EXCEPTION USING ERRCODE = condition;
             EXCEPTION WHEN OTHERS THEN
                 -- An unknown name raises 42704 itself: report no code for it.
                 IF SQLERRM LIKE 'unrecognized exception condition%' THEN RETURN NULL; END IF;
                 RETURN SQLSTATE;
             END $$",
        )?;
        for name in conditions_to_resolve {
            let code: Option<String> = db
                .query_one("SELECT pg_temp.sqlstate_of($1)", &[name])?
                .get(0);
            if let Some(code) = code {
                cat.conditions.insert(name.clone(), code);
            }
        }
        Ok(cat)
    }

    fn relation(&self, kind: RelKind, name: &str) -> Option<&Relation> {
        self.relations
            .iter()
            .find(|r| r.kind == kind && r.name == name)
    }
}

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
