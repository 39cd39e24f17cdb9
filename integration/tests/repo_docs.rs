//! The documents live in the repository and match it: no link leaves the
//! repository or points at nothing, and docs/ARCHITECTURE.md's layout names
//! what is there and nothing that is not. No database needed.

use byok_integration::repo_docs::{layout_entries, layout_problems, link_problems, tree};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

#[test]
fn no_document_links_outside_the_repository() {
    let problems = link_problems(&repo());
    assert!(
        problems.is_empty(),
        "Markdown links that do not stay in the repository:\n- {}",
        problems.join("\n- ")
    );
}

#[test]
fn architecture_layout_matches_the_tree() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let entries = layout_entries(&text);
    assert!(
        entries.iter().any(|e| e == "src/lib.rs") && entries.iter().any(|e| e == "sql/"),
        "the layout block of docs/ARCHITECTURE.md was not found or not read: {entries:?}"
    );
    let problems = layout_problems(&entries, &tree(&root));
    assert!(
        problems.is_empty(),
        "docs/ARCHITECTURE.md's layout differs from the tree:\n- {}",
        problems.join("\n- ")
    );
}

/// The layout check fails both ways: a stale line and an unlisted file.
#[test]
fn the_layout_check_catches_stale_and_missing_entries() {
    let layout = "## Layout\n\n```\nsrc/                Rust\n  lib.rs            init\n  \
                  gone.rs           removed\n                    (a continuation line)\nsql/\n  a.sql\n```\n";
    let entries = layout_entries(layout);
    assert_eq!(
        entries,
        ["src/", "src/lib.rs", "src/gone.rs", "sql/", "sql/a.sql"]
    );
    let tree: BTreeSet<String> = [
        "src/",
        "src/lib.rs",
        "src/new.rs",
        "sql/",
        "sql/a.sql",
        "README.md",
    ]
    .map(String::from)
    .into();
    let problems = layout_problems(&entries, &tree);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("names src/gone.rs, which does not exist")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("src/new.rs is not in") && p.contains("\n      new.rs")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("README.md is not in")),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

/// The link check fails on each kind of bad link and passes a good one.
#[test]
fn the_link_check_catches_links_that_leave_or_miss() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("docs/A.md"), "# A title\n\n## Roles\n").unwrap();
    std::fs::write(
        dir.path().join("README.md"),
        "See [the plan](../shared/design/API.md), [gone](docs/missing.md), \
         [web](https://example.com/x), [bad anchor](docs/A.md#nope), \
         [fine](docs/A.md#roles), [also fine](docs/A.md) and `[code](../x.md)`.\n\n\
         ```\n[fenced](../y.md)\n```\n",
    )
    .unwrap();
    let problems = link_problems(dir.path());
    for needle in [
        "link ../shared/design/API.md climbs out of the repository",
        "link docs/missing.md points at docs/missing.md, which does not exist",
        "link https://example.com/x leaves the repository",
        "docs/A.md has no heading whose anchor is #nope",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle}: {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 4, "{problems:#?}");
}
