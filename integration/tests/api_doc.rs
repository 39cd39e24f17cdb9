//! docs/API.md is the contract, and it cannot drift: every function, view,
//! table, type, role and setting the installed extension has is documented
//! exactly as installed (signature, result, defaults, grants, columns), and
//! every SQLSTATE the sources can raise is in its SQLSTATE table. Failures
//! say what to write in API.md. The checker itself lives in
//! `byok_integration::api_doc`.

use byok_integration::api_doc::{
    check_raised, compare, function_section, raised_sqlstates, ApiDoc, Catalog, Function, Raised,
    RelKind, Setting,
};
use byok_integration::{Cluster, ClusterOptions};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn api_doc() -> ApiDoc {
    let path = repo().join("docs/API.md");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    ApiDoc::parse(&text).unwrap_or_else(|errors| {
        panic!(
            "docs/API.md does not follow the format stated at its top:\n- {}",
            errors.join("\n- ")
        )
    })
}

#[track_caller]
fn assert_none(problems: Vec<String>, what: &str) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

#[test]
fn api_md_matches_the_installed_extension() {
    let doc = api_doc();
    let c = Cluster::start(ClusterOptions::default());
    let mut db = c.client();
    // API.md's Callers/Readers lines describe a database with Supabase's
    // roles, which get their grants from grant_supabase_roles().
    db.batch_execute(
        "CREATE ROLE anon NOLOGIN; CREATE ROLE authenticated NOLOGIN;
         CREATE ROLE service_role NOLOGIN; SELECT byok.grant_supabase_roles();",
    )
    .unwrap_or_else(|e| c.fail("create Supabase's roles and grant them", &e));
    let conditions: Vec<String> = doc.sqlstates.iter().map(|r| r.condition.clone()).collect();
    let cat =
        Catalog::read(&mut db, &conditions).unwrap_or_else(|e| c.fail("read the catalog", &e));

    // The catalog read must have found the surface at all, or "no
    // difference" would mean nothing.
    assert!(
        cat.functions.iter().any(|f| f.signature
            == "byok.add_key(workspace_id uuid, vendor text, api_key text, label text)"),
        "the catalog read found no byok.add_key: {:?}",
        cat.functions
            .iter()
            .map(|f| &f.signature)
            .collect::<Vec<_>>()
    );
    assert!(cat.settings.iter().any(|s| s.name == "byok.redact_logs"));
    assert!(cat.created_roles.contains("byok_worker"));
    assert!(cat
        .relations
        .iter()
        .any(|r| r.kind == RelKind::Type && r.name == "byok.key_info"));

    assert_none(
        compare(&doc, &cat),
        "docs/API.md differs from the installed extension",
    );
}

#[test]
fn every_sqlstate_the_sources_raise_is_in_the_table() {
    let doc = api_doc();
    let raised = raised_sqlstates(&repo());
    for code in ["22004", "22023", "42501", "55000", "P0002"] {
        assert!(
            raised.iter().any(|(r, _)| *r == Raised::Code(code.into())),
            "the source scan no longer finds SQLSTATE {code} in sql/: is it still reading them?"
        );
    }
    assert!(
        raised
            .iter()
            .any(|(r, _)| *r == Raised::Condition("data_corrupted".into())),
        "the source scan no longer finds ERRCODE_DATA_CORRUPTED in src/error.rs"
    );
    assert_none(
        check_raised(&doc, &raised),
        "docs/API.md's SQLSTATE table differs from what the sources raise",
    );
}

/// The checks are only worth something if they fail: each alteration of the
/// catalog (or of the sources' findings) must be reported, naming the thing
/// and what to write.
#[test]
fn the_checks_catch_every_kind_of_drift() {
    let doc = api_doc();
    let same = Catalog::from_doc(&doc);
    assert_none(compare(&doc, &same), "API.md against itself");

    let expect = |cat: Catalog, needle: &str| {
        let problems = compare(&doc, &cat);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem mentioning {needle:?}, got: {problems:#?}"
        );
    };

    let mut cat = same.clone();
    let new = Function {
        signature: "byok.rotate_master_key(new_version integer)".into(),
        result: "integer".into(),
        defaults: BTreeSet::new(),
        callers: BTreeSet::new(),
    };
    cat.functions.push(new.clone());
    let section = function_section(&new);
    assert!(section.starts_with("### byok.rotate_master_key(new_version integer)\n"));
    assert!(section.contains("- Returns: `integer`") && section.contains("superusers only"));
    expect(cat, "### byok.rotate_master_key(new_version integer)");

    let mut cat = same.clone();
    cat.functions
        .retain(|f| !f.signature.starts_with("byok.use_key("));
    expect(
        cat,
        "byok.use_key(workspace_id uuid, vendor text), which is not installed",
    );

    let mut cat = same.clone();
    let f = cat
        .functions
        .iter_mut()
        .find(|f| f.signature.starts_with("byok.claim_jobs("))
        .unwrap();
    f.signature = "byok.claim_jobs(worker text, max_jobs integer)".into();
    expect(
        cat,
        "the installed function is byok.claim_jobs(worker text, max_jobs integer)",
    );

    let mut cat = same.clone();
    let f = cat
        .functions
        .iter_mut()
        .find(|f| f.signature.starts_with("byok.add_key("))
        .unwrap();
    f.defaults = ["label => 'default'".to_string()].into();
    expect(cat, "- Defaults: `label => 'default'`");

    let mut cat = same.clone();
    let f = cat
        .functions
        .iter_mut()
        .find(|f| f.signature.starts_with("byok.use_key("))
        .unwrap();
    f.callers.insert("authenticated".into());
    expect(
        cat,
        "- Callers: `authenticated`, `byok_consumer`, `service_role`",
    );

    let mut cat = same.clone();
    let f = cat
        .functions
        .iter_mut()
        .find(|f| f.signature.starts_with("byok.list_keys("))
        .unwrap();
    f.result = "SETOF record".into();
    expect(cat, "- Returns: `SETOF record`");

    let mut cat = same.clone();
    let v = cat
        .relations
        .iter_mut()
        .find(|r| r.name == "byok.vendor_status")
        .unwrap();
    v.columns.push_str(", region text");
    expect(cat, "region text");

    let mut cat = same.clone();
    let t = cat
        .relations
        .iter_mut()
        .find(|r| r.name == "byok.keys")
        .unwrap();
    t.readers.insert("anon".into());
    expect(cat, "- Readers: `anon`, `byok_admin`, `service_role`");

    let mut cat = same.clone();
    cat.created_roles.insert("byok_auditor".into());
    expect(cat, "| `byok_auditor` | yes |");

    let mut cat = same.clone();
    cat.grantees.insert("PUBLIC".into());
    expect(cat, "role PUBLIC is granted privileges");

    let mut cat = same.clone();
    cat.settings.push(Setting {
        name: "byok.cache_mode".into(),
        vartype: "enum".into(),
        range: "—".into(),
        default: "off".into(),
        context: "superuser".into(),
    });
    expect(cat, "| `byok.cache_mode` | enum | — | `off` | superuser |");

    let mut cat = same.clone();
    cat.settings
        .iter_mut()
        .find(|s| s.name == "byok.max_attempts")
        .unwrap()
        .default = "8".into();
    expect(
        cat,
        "| `byok.max_attempts` | integer | 1..100 | `8` | superuser |",
    );

    let mut cat = same.clone();
    cat.conditions
        .insert("data_corrupted".into(), "XX002".into());
    expect(cat, "which is SQLSTATE XX002");

    // The source side: a new raise, and a table row nothing raises any more.
    let mut raised = raised_sqlstates(&repo());
    raised.push((Raised::Code("P0001".into()), "sql/new.sql:7".into()));
    raised.push((
        Raised::Condition("unique_violation".into()),
        "src/new.rs:3".into(),
    ));
    let problems = check_raised(&doc, &raised);
    for needle in [
        "sql/new.sql:7 raises SQLSTATE P0001",
        "src/new.rs:3 raises condition unique_violation",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle}: {problems:#?}"
        );
    }
    // P0002 is raised in SQL by code and in Rust (use_key) by condition.
    raised.retain(|(r, _)| {
        *r != Raised::Code("P0002".into()) && *r != Raised::Condition("no_data_found".into())
    });
    let problems = check_raised(&doc, &raised);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("lists P0002 (no_data_found)")),
        "{problems:#?}"
    );

    // And the parser refuses what it cannot read rather than skipping it.
    let broken = "### byok.thing\n\n- Returns: `text`\n";
    let errors = ApiDoc::parse(broken).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("### byok.thing")),
        "{errors:?}"
    );
    let no_callers = "### byok.thing(x integer)\n\n- Returns: `text`\n";
    let errors = ApiDoc::parse(no_callers).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("no `- Callers:` line")),
        "{errors:?}"
    );
}
