//! Sample vendor keys for tests, shared by every crate of the workspace
//! (feature `samples`, off by default: nothing here ships in the extension
//! or the sidecar binary).
//!
//! The grammars follow `shared/reference/vendors.md`. Every key here is
//! random or made up, so none is real and no vendor is ever called with one.
//!
//! * [`sample_key`]: a well-formed key of a named shape, random but fixed by
//!   its seed (a seed names the same key forever, across crate versions).
//! * [`sample_key_marked`]: the same, with the body starting with a marker
//!   (the mock vendor reads its behaviour from the first body characters).
//! * [`anthropic_api`] … [`openai_legacy`]: one fixed key per published shape,
//!   for tests that check lengths and kinds.
//! * [`random_master_key_hex`]: a fresh master key.
//! * [`strategies`]: proptest generators of keys, of text around them, and
//!   of keys broken by the separators logs and JSON insert.
//!
//! Another crate's tests turn it on in its `Cargo.toml` (dev-dependencies
//! only, so shipped builds never see it):
//! `[dev-dependencies] byok-core = { workspace = true, features = ["samples"] }`.

pub mod strategies;

/// Characters of Anthropic and OpenAI project/service-account key bodies.
pub const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
/// Characters of legacy OpenAI key bodies (alphanumerics only).
pub const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Every vendor name [`sample_key`] accepts, in a stable order.
pub const SAMPLE_VENDORS: [&str; 6] = [
    "anthropic",
    "openai",
    "openai-svcacct",
    "openai-legacy",
    "anthropic-admin",
    "openai-admin",
];

/// splitmix64: tiny and stable across crate versions (unlike `StdRng`), so a
/// seed names the same key forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

/// A well-formed test key, random but deterministic from `seed` (different
/// seeds give different keys; vendors are separated too).
///
/// | vendor | shape | length |
/// |---|---|---|
/// | `anthropic` | `sk-ant-api03-` + 93 `[A-Za-z0-9_-]` + `AA` | 108 |
/// | `openai` (project) | `sk-proj-` + 74 + `T3BlbkFJ` + 74 | 164 |
/// | `openai-svcacct` | `sk-svcacct-` + 74 + `T3BlbkFJ` + 74 | 167 |
/// | `openai-legacy` | `sk-` + 20 alnum + `T3BlbkFJ` + 20 alnum | 51 |
/// | `anthropic-admin` | `sk-ant-admin01-` + 93 + `AA` (must be refused) | 110 |
/// | `openai-admin` | `sk-admin-` + 74 + `T3BlbkFJ` + 74 (must be refused) | 165 |
///
/// Panics on any other vendor name (a test typo, not an input to handle).
pub fn sample_key(vendor: &str, seed: u64) -> String {
    let salt: u64 = match SAMPLE_VENDORS.iter().position(|v| *v == vendor) {
        Some(i) => i as u64 + 1,
        None => panic!(
            "sample_key: unknown vendor {vendor:?} (one of {})",
            SAMPLE_VENDORS.join(", ")
        ),
    };
    let mut rng = SplitMix64(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (salt << 56) ^ salt);
    // Burn a few outputs so nearby seeds diverge immediately.
    for _ in 0..4 {
        rng.next();
    }
    let body = |rng: &mut SplitMix64, n| rng.chars(KEY_ALPHABET, n);
    let openai = |rng: &mut SplitMix64, prefix: &str| {
        let a = body(rng, 74);
        let b = body(rng, 74);
        format!("{prefix}{a}T3BlbkFJ{b}")
    };
    match vendor {
        "anthropic" => format!("sk-ant-api03-{}AA", body(&mut rng, 93)),
        "anthropic-admin" => format!("sk-ant-admin01-{}AA", body(&mut rng, 93)),
        "openai" => openai(&mut rng, "sk-proj-"),
        "openai-svcacct" => openai(&mut rng, "sk-svcacct-"),
        "openai-admin" => openai(&mut rng, "sk-admin-"),
        "openai-legacy" => {
            let a = rng.chars(ALNUM, 20);
            let b = rng.chars(ALNUM, 20);
            format!("sk-{a}T3BlbkFJ{b}")
        }
        _ => unreachable!("every name in SAMPLE_VENDORS has a shape"),
    }
}

/// Length of the public prefix of a [`sample_key`] of `vendor`: the key's
/// secret characters are `key[sample_prefix_len(vendor)..]`.
pub fn sample_prefix_len(vendor: &str) -> usize {
    match vendor {
        "anthropic" => "sk-ant-api03-".len(),
        "anthropic-admin" => "sk-ant-admin01-".len(),
        "openai" => "sk-proj-".len(),
        "openai-svcacct" => "sk-svcacct-".len(),
        "openai-admin" => "sk-admin-".len(),
        "openai-legacy" => "sk-".len(),
        other => panic!("sample_prefix_len: unknown vendor {other:?}"),
    }
}

/// [`sample_key`] with its body starting with `marker` (which must be made of
/// the vendor's key characters and shorter than the body's first part).
pub fn sample_key_marked(vendor: &str, marker: &str, seed: u64) -> String {
    let mut key = sample_key(vendor, seed);
    let at = sample_prefix_len(vendor);
    assert!(
        marker.len() <= 20 && marker.bytes().all(|b| KEY_ALPHABET.contains(&b)),
        "sample_key_marked: marker {marker:?} is not a short run of key characters"
    );
    key.replace_range(at..at + marker.len(), marker);
    key
}

/// 32 random bytes as 64 lowercase hex characters: a master key for a
/// keyring line (`"<version> <hex>"`) or `BYOK_MASTER_KEY`.
pub fn random_master_key_hex() -> String {
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    hex::encode(k)
}

/// An Anthropic API key whose body is `fill` repeated, so its mask is
/// predictable (`'q'` gives `…qqAA`): for tests that assert exact masks.
pub fn filled_anthropic_key(fill: char) -> String {
    format!("sk-ant-api03-{}AA", fill.to_string().repeat(93))
}

/// An OpenAI project key whose halves are `fill` repeated (mask `…` + 4 × `fill`).
pub fn filled_openai_key(fill: char) -> String {
    let half = fill.to_string().repeat(74);
    format!("sk-proj-{half}T3BlbkFJ{half}")
}

/// A fixed Anthropic API key (108 characters).
pub fn anthropic_api() -> String {
    format!(
        "sk-ant-api03-{}AA",
        "aB3_-xYz9".repeat(11).chars().take(93).collect::<String>()
    )
}

/// A fixed Anthropic admin key (110 characters; pg_byok refuses to store it).
pub fn anthropic_admin() -> String {
    format!(
        "sk-ant-admin01-{}AA",
        "Qw7-_e".repeat(16).chars().take(93).collect::<String>()
    )
}

/// A fixed Anthropic OAuth token, `kind` `oat` (access) or `ort` (refresh).
pub fn anthropic_oauth(kind: &str) -> String {
    format!("sk-ant-{kind}01-{}", "Zt4_k".repeat(20))
}

/// A fixed OpenAI project key whose two halves are `half` characters (58 or 74
/// in the wild).
pub fn openai_project(half: usize) -> String {
    let side: String = "pQ8_-r".repeat(20).chars().take(half).collect();
    format!("sk-proj-{side}T3BlbkFJ{side}")
}

/// A fixed OpenAI service-account key with halves of `half` characters.
pub fn openai_svcacct(half: usize) -> String {
    let side: String = "Mn2-_s".repeat(20).chars().take(half).collect();
    format!("sk-svcacct-{side}T3BlbkFJ{side}")
}

/// A fixed OpenAI admin key (pg_byok refuses to store it).
pub fn openai_admin() -> String {
    let side: String = "Ad5_m".repeat(20).chars().take(74).collect();
    format!("sk-admin-{side}T3BlbkFJ{side}")
}

/// A fixed legacy OpenAI key (51 characters).
pub fn openai_legacy() -> String {
    "sk-abcdefghij0123456789T3BlbkFJ9876543210ABCDEFGHIJ".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_in(s: &str, alphabet: &[u8]) -> bool {
        s.bytes().all(|b| alphabet.contains(&b))
    }

    #[test]
    fn anthropic_shape() {
        for seed in 0..50 {
            let k = sample_key("anthropic", seed);
            assert_eq!(k.len(), 108, "{k}");
            assert!(k.starts_with("sk-ant-api03-"));
            assert!(k.ends_with("AA"));
            assert!(all_in(&k[13..106], KEY_ALPHABET));
        }
        let a = sample_key("anthropic-admin", 3);
        assert_eq!(a.len(), 110);
        assert!(a.starts_with("sk-ant-admin01-") && a.ends_with("AA"));
    }

    #[test]
    fn openai_shapes() {
        for seed in 0..50 {
            let k = sample_key("openai", seed);
            assert_eq!(k.len(), 164, "{k}");
            assert!(k.starts_with("sk-proj-"));
            assert_eq!(&k[8 + 74..8 + 74 + 8], "T3BlbkFJ");
            assert!(all_in(&k[8..82], KEY_ALPHABET));
            assert!(all_in(&k[90..], KEY_ALPHABET));
            assert_eq!(k[90..].len(), 74);
        }
        let s = sample_key("openai-svcacct", 1);
        assert_eq!(s.len(), 167);
        assert!(s.starts_with("sk-svcacct-"));
        let l = sample_key("openai-legacy", 1);
        assert_eq!(l.len(), 51);
        assert_eq!(&l[23..31], "T3BlbkFJ");
        assert!(all_in(&l[3..23], ALNUM) && all_in(&l[31..], ALNUM));
        let adm = sample_key("openai-admin", 1);
        assert_eq!(adm.len(), 165);
        assert!(adm.starts_with("sk-admin-"));
    }

    #[test]
    fn seeds_name_the_same_keys_forever() {
        // The keys integration/src/keys.rs produced before it moved here;
        // changing them would silently change every test that names a seed.
        let pinned = [
            ("anthropic", "sk-ant-api03-dmoJ7Hwd33eAr7j_"),
            ("openai", "sk-proj-6N0bDADJexLD13HAU449"),
            ("openai-svcacct", "sk-svcacct-0vYNg3-o0XyMRP5s"),
            (
                "openai-legacy",
                "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",
            ),
            ("anthropic-admin", "sk-ant-admin01-06aT56DSnbRqLK6q"),
            ("openai-admin", "sk-admin-tF9mG2-uwz1va68fc58"),
        ];
        for (vendor, start) in pinned {
            assert!(sample_key(vendor, 0).starts_with(start), "{vendor}");
        }
    }

    #[test]
    fn deterministic_and_distinct() {
        assert_eq!(sample_key("anthropic", 7), sample_key("anthropic", 7));
        assert_eq!(sample_key("openai", 7), sample_key("openai", 7));
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            assert!(seen.insert(sample_key("anthropic", seed)));
            assert!(seen.insert(sample_key("openai", seed)));
        }
        assert_ne!(
            &sample_key("anthropic", 1)[13..40],
            &sample_key("anthropic-admin", 1)[15..42]
        );
    }

    #[test]
    fn marked_keys_start_with_the_marker() {
        for v in SAMPLE_VENDORS.into_iter().filter(|v| *v != "openai-legacy") {
            let k = sample_key_marked(v, "ok_fast", 3);
            assert_eq!(k.len(), sample_key(v, 3).len());
            assert_eq!(&k[sample_prefix_len(v)..][..7], "ok_fast", "{v}");
            assert_eq!(
                k[7 + sample_prefix_len(v)..],
                sample_key(v, 3)[7 + sample_prefix_len(v)..]
            );
        }
    }

    #[test]
    #[should_panic(expected = "unknown vendor")]
    fn unknown_vendor_panics() {
        sample_key("gemini", 1);
    }

    #[test]
    fn master_key_hex() {
        let a = random_master_key_hex();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_master_key_hex());
    }
}
