//! The queries pg_byok runs over the app's own tables (membership, workspace
//! state, the ids a TRUNCATE removes), built from names the extension read
//! by OID under a lock.
//!
//! They run as the table's owner (the extension switches user first), so
//! they may use nothing from schema `byok`: every function, operator and type
//! is spelled `pg_catalog.…`, which also makes them independent of the
//! caller's `search_path`. Every identifier is quoted. `FROM ONLY`: pg_byok
//! reads exactly the attached table, never an inheritance child.

/// How an id column is compared with a uuid parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A `uuid` column: `col = $n`, index-friendly.
    Uuid,
    /// A `text` or `varchar` column holding uuids as text.
    Text,
}

/// What a status column holds; both are printed with `format('%s', …)`,
/// whose output functions are built in (a cast could be anyone's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    Text,
    Enum,
}

/// An SQL identifier, always double-quoted (`"` doubled inside).
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// What `byok._as_uuid` accepts: a uuid with optional hyphens between its
/// groups, optionally in matching braces, with surrounding blanks. Every
/// string it matches is valid input to the uuid type after `btrim` of
/// [`BLANKS`].
pub const UUID_TEXT_PATTERN: &str = r"^\s*(\{[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}|[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})\s*$";

/// The characters `\s` matches in a Postgres regular expression.
pub const BLANKS: &str = r"E' \t\n\r\f\x0B'";

/// `col = $n` for a uuid column; for a text column, `col` equal to the
/// canonical lower- or upper-case spelling of `$n` (an index on `col` can
/// answer it; other spellings are not found).
fn canonical_match(col: &str, kind: IdKind, param: u8) -> String {
    let col = quote_ident(col);
    match kind {
        IdKind::Uuid => format!("{col} OPERATOR(pg_catalog.=) ${param}"),
        IdKind::Text => format!(
            "{col}::pg_catalog.text OPERATOR(pg_catalog.=) ANY (ARRAY[${param}::pg_catalog.text, \
             pg_catalog.upper(${param}::pg_catalog.text)])"
        ),
    }
}

/// `col`, read as a uuid the way `byok._as_uuid` does (NULL when it is not
/// one), equal to `$n`: any spelling of the uuid matches. Needs a scan.
fn uuid_match(col: &str, param: u8) -> String {
    let col = quote_ident(col);
    format!(
        "CASE WHEN {col}::pg_catalog.text OPERATOR(pg_catalog.~*) {} \
         THEN pg_catalog.btrim({col}::pg_catalog.text, {BLANKS})::pg_catalog.uuid END \
         OPERATOR(pg_catalog.=) ${param}",
        escaped_literal(UUID_TEXT_PATTERN)
    )
}

/// `s` as an `E'…'` literal: correct whatever `standard_conforming_strings` is.
fn escaped_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Is `$2` (the caller's subject, a uuid) a member of workspace `$1`?
/// One boolean row. Authorization fails closed: ids spelled other than in
/// canonical lower or upper case are not found.
pub fn membership(
    table: &str,
    workspace_col: &str,
    workspace_kind: IdKind,
    user_col: &str,
    user_kind: IdKind,
) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM ONLY {table} WHERE {} AND {})",
        canonical_match(workspace_col, workspace_kind, 1),
        canonical_match(user_col, user_kind, 2)
    )
}

/// The status of workspace `$1` (a uuid): lower-cased and trimmed, `''` for
/// a NULL status or a table without a status column; no row when the table
/// has no such workspace. For a text id column the canonical spellings are
/// tried through the index first and, only when neither is there, every row
/// is compared as a uuid: a workspace stored as `'DdDd…'` must still be
/// found, or keys could be added to an inactive workspace.
pub fn workspace_state(
    table: &str,
    id_col: &str,
    id_kind: IdKind,
    status: Option<(&str, StatusKind)>,
) -> String {
    let status = match status {
        None => "''::pg_catalog.text".to_owned(),
        Some((col, _)) => format!(
            "COALESCE(pg_catalog.lower(pg_catalog.btrim(pg_catalog.format('%s', {}))), '')",
            quote_ident(col)
        ),
    };
    let fast = format!(
        "SELECT {status} FROM ONLY {table} WHERE {} LIMIT 1",
        canonical_match(id_col, id_kind, 1)
    );
    match id_kind {
        IdKind::Uuid => fast,
        IdKind::Text => format!(
            "({fast}) UNION ALL (SELECT {status} FROM ONLY {table} WHERE {} LIMIT 1) LIMIT 1",
            uuid_match(id_col, 1)
        ),
    }
}

/// Every id in the table, as text (the extension reads them as uuids).
pub fn workspace_ids(table: &str, id_col: &str) -> String {
    format!(
        "SELECT DISTINCT {}::pg_catalog.text FROM ONLY {table}",
        quote_ident(id_col)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_and_quotes_doubled() {
        assert_eq!(quote_ident("id"), "\"id\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(qualified("app", "Org People"), "\"app\".\"Org People\"");
    }

    #[test]
    fn membership_of_uuid_columns_is_two_equalities() {
        let q = membership("\"app\".\"m\"", "ws", IdKind::Uuid, "uid", IdKind::Uuid);
        assert_eq!(
            q,
            "SELECT EXISTS (SELECT 1 FROM ONLY \"app\".\"m\" WHERE \"ws\" OPERATOR(pg_catalog.=) $1 \
             AND \"uid\" OPERATOR(pg_catalog.=) $2)"
        );
    }

    #[test]
    fn text_columns_match_both_canonical_spellings() {
        let q = membership("t", "ws", IdKind::Text, "uid", IdKind::Uuid);
        assert!(q.contains("ARRAY[$1::pg_catalog.text, pg_catalog.upper($1::pg_catalog.text)]"));
    }

    #[test]
    fn nothing_is_resolved_through_search_path() {
        let queries = [
            membership("t", "a", IdKind::Text, "b", IdKind::Text),
            workspace_state("t", "id", IdKind::Text, Some(("st", StatusKind::Enum))),
            workspace_ids("t", "id"),
        ];
        for q in queries {
            assert!(!q.contains("byok."), "{q}");
            assert!(!q.contains(" = "), "unqualified operator in {q}");
            assert!(!q.contains(" IN "), "unqualified IN in {q}");
            assert!(q.contains("FROM ONLY"), "{q}");
        }
    }

    #[test]
    fn text_workspace_ids_fall_back_to_a_uuid_comparison() {
        let q = workspace_state("t", "id", IdKind::Text, None);
        assert!(q.contains("UNION ALL"));
        assert!(q.contains("::pg_catalog.uuid END OPERATOR(pg_catalog.=) $1"));
        assert!(q.ends_with("LIMIT 1"));
        let q = workspace_state("t", "id", IdKind::Uuid, None);
        assert!(!q.contains("UNION ALL"));
    }
}
