//! docs/API.md against the installed extension and the sources.
//!
//! [`ApiDoc::parse`] (parse.rs) reads the reference (its format is stated at
//! the top of API.md); [`Catalog::read`] (catalog.rs) reads the same facts
//! from a database where pg_byok is installed; [`compare`] (compare.rs) lists
//! every difference as a sentence that says what to write in API.md.
//! [`raised_sqlstates`] (sources.rs) greps the sources for the SQLSTATEs
//! pg_byok can raise and [`check_raised`] holds them against the SQLSTATE
//! table. Doc and catalog share the types below, so a catalog can also be
//! built from a doc ([`Catalog::from_doc`]) to show that every check fails
//! when the two disagree.

mod catalog;
mod compare;
mod parse;
mod sources;

pub use catalog::defaults_of;
pub use compare::{compare, function_section, relation_section};
pub use sources::{check_raised, raised_sqlstates};

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};

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

pub(crate) fn ticked(line: &str) -> Vec<String> {
    let re = Regex::new("`([^`]+)`").unwrap();
    re.captures_iter(line).map(|c| c[1].to_string()).collect()
}

pub(crate) fn is_sqlstate(s: &str) -> bool {
    s.len() == 5
        && s.chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        && s.chars().any(|c| c.is_ascii_digit())
}
