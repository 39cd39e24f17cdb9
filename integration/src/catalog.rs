//! A name-based description of a database's schema objects, for comparing
//! an upgraded pg_byok with a fresh install: two databases that print the
//! same [`Catalog`] have the same functions (definitions, settings,
//! privileges, comments), tables, columns (in order, with types, defaults,
//! column privileges), constraints, indexes, policies, triggers, views,
//! sequences, types, ACLs, extension members, initial privileges and
//! extension config tables. OIDs never appear, so the two may differ in
//! creation order.

use std::collections::{BTreeMap, BTreeSet};

/// One query per section; each yields one text column, and `$1` is the
/// `text[]` of schemas to describe. Rows are compared as sorted sets.
const SECTIONS: &[(&str, &str)] = &[
    (
        "extension",
        "SELECT row(e.extname, e.extversion, e.extrelocatable, n.nspname, pg_get_userbyid(e.extowner),
                    (SELECT array_agg(c.cfg::regclass::text || ' WHERE ' || coalesce(c.cond, '')
                                      ORDER BY c.cfg::regclass::text)
                       FROM unnest(e.extconfig, e.extcondition) AS c(cfg, cond)))::text
           FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname = 'pg_byok' AND $1::text[] IS NOT NULL",
    ),
    (
        "extension members",
        "SELECT pg_describe_object(d.classid, d.objid, d.objsubid)
           FROM pg_depend d JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass
                                                AND d.refobjid = e.oid
          WHERE e.extname = 'pg_byok' AND d.deptype = 'e' AND $1::text[] IS NOT NULL",
    ),
    (
        "initial privileges",
        "SELECT pg_describe_object(i.classoid, i.objoid, i.objsubid) || ' ' || i.privtype::text || ' '
                || i.initprivs::text
           FROM pg_init_privs i
           JOIN pg_depend d ON d.classid = i.classoid AND d.objid = i.objoid AND d.deptype = 'e'
           JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
          WHERE e.extname = 'pg_byok' AND $1::text[] IS NOT NULL",
    ),
    (
        "schemas",
        "SELECT row(nspname, pg_get_userbyid(nspowner), nspacl,
                    obj_description(oid, 'pg_namespace'))::text
           FROM pg_namespace WHERE nspname = ANY($1)",
    ),
    (
        "functions",
        "SELECT row(p.oid::regprocedure::text, p.prokind, pg_get_userbyid(p.proowner), p.proacl,
                    obj_description(p.oid, 'pg_proc'),
                    CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END)::text
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = ANY($1)",
    ),
    (
        "relations",
        "SELECT row(c.oid::regclass::text, c.relkind, pg_get_userbyid(c.relowner), c.relacl,
                    c.relrowsecurity, c.relforcerowsecurity, c.reloptions, c.relpersistence,
                    c.relreplident, obj_description(c.oid, 'pg_class'))::text
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = ANY($1)",
    ),
    (
        "columns",
        // Position among the live columns, not attnum: a dropped column
        // leaves a gap that changes nothing a query sees.
        "SELECT row(c.oid::regclass::text,
                    row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
                    format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
                    co.collname, a.attacl, col_description(c.oid, a.attnum))::text
           FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           LEFT JOIN pg_collation co ON co.oid = a.attcollation
          WHERE n.nspname = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
            AND c.relkind IN ('r', 'p', 'v', 'm', 'c', 'f')",
    ),
    (
        "constraints",
        "SELECT row(coalesce(nullif(c.conrelid, 0)::regclass::text, c.contypid::regtype::text),
                    c.conname, pg_get_constraintdef(c.oid), c.condeferrable, c.condeferred,
                    c.convalidated, obj_description(c.oid, 'pg_constraint'))::text
           FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
          WHERE n.nspname = ANY($1)",
    ),
    (
        "indexes",
        "SELECT i.indexdef FROM pg_indexes i WHERE i.schemaname = ANY($1)",
    ),
    (
        "policies",
        "SELECT row(p.schemaname, p.tablename, p.policyname, p.permissive, p.roles, p.cmd,
                    p.qual, p.with_check)::text
           FROM pg_policies p WHERE p.schemaname = ANY($1)",
    ),
    (
        "triggers",
        "SELECT row(pg_get_triggerdef(t.oid), t.tgenabled, obj_description(t.oid, 'pg_trigger'))::text
           FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = ANY($1) AND NOT t.tgisinternal",
    ),
    (
        "event triggers",
        "SELECT row(evtname, evtevent, evtfoid::regprocedure::text, evtenabled, evttags)::text
           FROM pg_event_trigger WHERE $1::text[] IS NOT NULL",
    ),
    (
        "views",
        "SELECT c.oid::regclass::text || ': ' || pg_get_viewdef(c.oid)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = ANY($1) AND c.relkind IN ('v', 'm')",
    ),
    (
        "rules",
        "SELECT r.definition FROM pg_rules r WHERE r.schemaname = ANY($1)",
    ),
    (
        "sequences",
        "SELECT row(s.schemaname, s.sequencename, s.data_type, s.start_value, s.min_value,
                    s.max_value, s.increment_by, s.cycle, s.cache_size)::text
           FROM pg_sequences s WHERE s.schemaname = ANY($1)",
    ),
    (
        "types",
        "SELECT row(t.oid::regtype::text, t.typtype, pg_get_userbyid(t.typowner), t.typacl,
                    obj_description(t.oid, 'pg_type'),
                    (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
                       FROM pg_enum e WHERE e.enumtypid = t.oid),
                    CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
                    t.typnotnull, t.typdefault)::text
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          WHERE n.nspname = ANY($1)",
    ),
    (
        "default privileges",
        "SELECT row(pg_get_userbyid(d.defaclrole), n.nspname, d.defaclobjtype, d.defaclacl)::text
           FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
          WHERE n.nspname IS NULL OR n.nspname = ANY($1)",
    ),
];

/// Section name → its rows, sorted.
#[derive(Debug, PartialEq, Eq)]
pub struct Catalog(pub BTreeMap<&'static str, BTreeSet<String>>);

impl Catalog {
    /// Describe `schemas` (and pg_byok's extension-wide facts) in `db`.
    pub fn read(db: &mut postgres::Client, schemas: &[&str]) -> Catalog {
        let schemas: Vec<String> = schemas.iter().map(|s| s.to_string()).collect();
        let mut out = BTreeMap::new();
        for (name, sql) in SECTIONS {
            let rows = db
                .query(*sql, &[&schemas])
                .unwrap_or_else(|e| panic!("catalog section {name}: {e:?}"));
            let set: BTreeSet<String> = rows
                .iter()
                .map(|r| {
                    r.get::<_, Option<String>>(0)
                        .unwrap_or_else(|| "NULL".into())
                })
                .collect();
            out.insert(*name, set);
        }
        Catalog(out)
    }

    /// How many rows the section has (0 if unknown), to check that a
    /// comparison compared something.
    pub fn len(&self, section: &str) -> usize {
        self.0.get(section).map_or(0, |s| s.len())
    }

    /// A readable difference (`- only in self`, `+ only in other`), per
    /// section; empty when equal. Rows of the same object (same first
    /// field: a function's signature, a table's name, …) are shown as one
    /// `~` entry with just the lines that differ.
    pub fn diff(&self, other: &Catalog, self_name: &str, other_name: &str) -> String {
        let mut text = String::new();
        for (name, _) in SECTIONS {
            let empty = BTreeSet::new();
            let a = self.0.get(name).unwrap_or(&empty);
            let b = other.0.get(name).unwrap_or(&empty);
            if a == b {
                continue;
            }
            text.push_str(&format!(
                "== {name} (- only in {self_name}, + only in {other_name})\n"
            ));
            let only_a: Vec<&String> = a.difference(b).collect();
            let only_b: Vec<&String> = b.difference(a).collect();
            let mut paired_b = BTreeSet::new();
            for row_a in &only_a {
                let twin = first_field(row_a).and_then(|key| {
                    only_b
                        .iter()
                        .position(|row_b| first_field(row_b) == Some(key))
                        .filter(|i| !paired_b.contains(i))
                });
                match twin {
                    Some(i) => {
                        paired_b.insert(i);
                        text.push_str(&line_diff(row_a, only_b[i]));
                    }
                    None => text.push_str(&format!("- {row_a}\n")),
                }
            }
            for (i, row_b) in only_b.iter().enumerate() {
                if !paired_b.contains(&i) {
                    text.push_str(&format!("+ {row_b}\n"));
                }
            }
        }
        text
    }
}

/// The first field of a composite value's text (`(a,b)` or `("a,b",c)`),
/// or None for other text.
fn first_field(row: &str) -> Option<&str> {
    let rest = row.strip_prefix('(')?;
    if let Some(quoted) = rest.strip_prefix('"') {
        // Inside quotes "" is an escaped quote: find the lone closing one.
        let bytes = quoted.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'"' {
                if bytes.get(i + 1) == Some(&b'"') {
                    i += 2;
                    continue;
                }
                return Some(&quoted[..i]);
            }
            i += 1;
        }
        None
    } else {
        rest.find([',', ')']).map(|end| &rest[..end])
    }
}

/// One object's two rows: its key, then the lines only one of them has.
fn line_diff(a: &str, b: &str) -> String {
    let la: BTreeSet<&str> = a.lines().collect();
    let lb: BTreeSet<&str> = b.lines().collect();
    let mut out = format!("~ {}\n", first_field(a).unwrap_or(a));
    for l in a.lines().filter(|l| !lb.contains(l)) {
        out.push_str(&format!("  - {l}\n"));
    }
    for l in b.lines().filter(|l| !la.contains(l)) {
        out.push_str(&format!("  + {l}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(rows: &[(&'static str, &[&str])]) -> Catalog {
        Catalog(
            rows.iter()
                .map(|(k, v)| (*k, v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        )
    }

    #[test]
    fn diff_names_both_sides_and_only_changed_sections() {
        let a = cat(&[("functions", &["f()", "g()"]), ("indexes", &["i"])]);
        let b = cat(&[("functions", &["f()", "h()"]), ("indexes", &["i"])]);
        let d = a.diff(&b, "upgraded", "fresh");
        assert!(d.contains("== functions"), "{d}");
        assert!(d.contains("- g()") && d.contains("+ h()"), "{d}");
        assert!(!d.contains("indexes"), "{d}");
        assert_eq!(a.diff(&a, "x", "y"), "");
    }

    #[test]
    fn diff_pairs_rows_of_one_object_and_shows_changed_lines() {
        let a = cat(&[("functions", &["(\"f(a, b)\",x\nbody 1\nsame)"])]);
        let b = cat(&[("functions", &["(\"f(a, b)\",x\nbody 2\nsame)"])]);
        let d = a.diff(&b, "upgraded", "fresh");
        assert!(d.contains("~ f(a, b)\n  - body 1\n  + body 2\n"), "{d}");
        assert!(!d.contains("same"), "{d}");
    }

    #[test]
    fn first_field_of_composite_text() {
        assert_eq!(first_field("(byok.keys,r,postgres)"), Some("byok.keys"));
        assert_eq!(first_field("(\"a,\"\"b\",c)"), Some("a,\"\"b"));
        assert_eq!(first_field("(only)"), Some("only"));
        assert_eq!(first_field("CREATE INDEX i"), None);
    }
}
