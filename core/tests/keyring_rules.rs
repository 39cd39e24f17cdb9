//! Keyring file and BYOK_MASTER_KEY parsing.

use byok_core::keyring::{generate_hex_key, Keyring};
use byok_core::{CoreError, ErrorKind};

const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const K2: &str = "ABCDEFabcdef0123456789abcdef0123456789ABCDEF0123456789abcdef0123";

fn line_error(text: &str) -> (usize, &'static str) {
    match Keyring::parse_file(text).expect_err("should be refused") {
        e @ CoreError::Keyring { line, reason } => {
            assert_eq!(e.kind(), ErrorKind::MasterKeyUnavailable);
            assert!(!e.to_string().contains("0101"), "{e}");
            (line, reason)
        }
        other => panic!("{other}"),
    }
}

#[test]
fn parses_versions_comments_and_blank_lines() {
    let text = format!("# pg_byok keyring\n\n1 {K1}\n  # old\n7 {K2}   # current\r\n\n");
    let ring = Keyring::parse_file(&text).unwrap();
    assert_eq!(ring.versions(), vec![1, 7]);
    assert_eq!(ring.primary_version(), 7);
    assert_eq!(ring.primary().0, 7);
    assert!(ring.get(1).is_some() && ring.get(2).is_none());
    let fp7 = ring.get(7).unwrap().fingerprint();
    assert_eq!(ring.find_by_fingerprint(&fp7), Some(7));
    assert_eq!(ring.find_by_fingerprint(&[0; 16]), None);
}

#[test]
fn accepts_a_leading_bom_and_max_version() {
    let ring = Keyring::parse_file(&format!("\u{FEFF}4294967295 {K1}\n")).unwrap();
    assert_eq!(ring.primary_version(), u32::MAX);
}

#[test]
fn empty_or_comment_only_file_is_refused() {
    for text in ["", "\n\n", "# nothing\n   \n"] {
        assert_eq!(line_error(text).0, 0);
    }
}

#[test]
fn errors_name_the_line() {
    assert_eq!(line_error(&format!("1 {K1}\n\n2 {}\n", &K2[..63])).0, 3);
    assert_eq!(line_error(&format!("1 {}zz\n", &K1[..62])).0, 1);
    assert_eq!(line_error(&format!("0 {K1}\n")).0, 1);
    assert_eq!(line_error(&format!("4294967296 {K1}\n")).0, 1);
    assert_eq!(line_error(&format!("+1 {K1}\n")).0, 1);
    assert_eq!(line_error(&format!("-1 {K1}\n")).0, 1);
    assert_eq!(line_error(&format!("x {K1}\n")).0, 1);
    assert_eq!(line_error(&format!("{K1}\n")).0, 1);
    assert_eq!(line_error(&format!("1 {K1} extra\n")).0, 1);
    assert_eq!(line_error(&format!("1={K1}\n")).0, 1);
}

#[test]
fn duplicate_versions_are_refused() {
    let (line, reason) = line_error(&format!("1 {K1}\n1 {K2}\n"));
    assert_eq!(line, 2);
    assert!(reason.contains("earlier line"));
}

#[test]
fn env_value_is_version_one() {
    let ring = Keyring::from_env_value(&format!("  {K2}\n")).unwrap();
    assert_eq!(ring.versions(), vec![1]);
    let from_file = Keyring::parse_file(&format!("1 {K2}")).unwrap();
    assert_eq!(
        ring.get(1).unwrap().fingerprint(),
        from_file.get(1).unwrap().fingerprint()
    );
}

#[test]
fn bad_env_values_are_refused_without_echo() {
    for bad in [
        "",
        "   ",
        &K1[..63],
        &format!("{K1}0"),
        &format!("{}g", &K1[..63]),
        &format!("1 {K1}"),
    ] {
        let e = Keyring::from_env_value(bad).unwrap_err();
        assert!(matches!(e, CoreError::BadEnvKey { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::MasterKeyUnavailable);
        assert!(!e.to_string().contains("0101"), "{e}");
    }
}

#[test]
fn fingerprints_differ_per_key_and_are_stable() {
    let a = Keyring::from_env_value(K1).unwrap();
    let b = Keyring::from_env_value(K2).unwrap();
    let a2 = Keyring::from_env_value(&K1.to_uppercase()).unwrap();
    assert_ne!(a.primary().1.fingerprint(), b.primary().1.fingerprint());
    assert_eq!(a.primary().1.fingerprint(), a2.primary().1.fingerprint());
}

#[test]
fn debug_prints_no_key_material() {
    let ring = Keyring::parse_file(&format!("1 {K1}\n2 {K2}\n")).unwrap();
    let shown = format!("{ring:?} {:?} {:#?}", ring.get(1).unwrap(), ring);
    assert!(shown.contains("MasterKey(<redacted>)"));
    assert!(shown.contains("[1, 2]"), "{shown}");
    for key in [K1, K2] {
        assert!(
            !shown.to_lowercase().contains(&key.to_lowercase()[..8]),
            "{shown}"
        );
    }
    // Nor bytes in decimal (a derived Debug of [u8; 32] would print "1, 1, 1").
    assert!(!shown.contains("1, 1, 1"), "{shown}");
}

#[test]
fn generated_keys_are_fresh_64_hex_and_loadable() {
    let a = generate_hex_key();
    let b = generate_hex_key();
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(*a, *b);
    Keyring::from_env_value(&a).unwrap();
    Keyring::parse_file(&format!("3 {}\n", *b)).unwrap();
}
