//! The same facts as API.md states, read from an installed extension.

use super::{ApiDoc, Catalog, Function, RelKind, Relation, Setting};
use regex::Regex;
use std::collections::BTreeSet;

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
                    coalesce(pg_get_function_result(p.oid), 'procedure'), pg_get_function_arguments(p.oid),
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

    pub(super) fn relation(&self, kind: RelKind, name: &str) -> Option<&Relation> {
        self.relations
            .iter()
            .find(|r| r.kind == kind && r.name == name)
    }
}
