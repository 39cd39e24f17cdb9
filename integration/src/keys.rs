//! Deterministic, well-formed vendor test keys (shapes from
//! `shared/reference/vendors.md`). Not real keys: no vendor is ever called.

/// Key characters of Anthropic and OpenAI project/service keys.
const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
/// Alphanumerics only (legacy OpenAI keys).
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// splitmix64: tiny, stable across crate versions (unlike `StdRng`), so a
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
/// Panics on any other vendor name.
pub fn sample_key(vendor: &str, seed: u64) -> String {
    let salt: u64 = match vendor {
        "anthropic" => 1,
        "openai" => 2,
        "openai-svcacct" => 3,
        "openai-legacy" => 4,
        "anthropic-admin" => 5,
        "openai-admin" => 6,
        other => panic!(
            "sample_key: unknown vendor {other:?} (anthropic, openai, openai-svcacct, \
             openai-legacy, anthropic-admin, openai-admin)"
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
        _ => unreachable!(),
    }
}

/// 32 random bytes as 64 lowercase hex characters: a master key for a
/// keyring line (`"<version> <hex>"`) or `BYOK_MASTER_KEY`.
pub fn random_master_key_hex() -> String {
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    hex::encode(k)
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
    fn deterministic_and_distinct() {
        assert_eq!(sample_key("anthropic", 7), sample_key("anthropic", 7));
        assert_eq!(sample_key("openai", 7), sample_key("openai", 7));
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            assert!(seen.insert(sample_key("anthropic", seed)));
            assert!(seen.insert(sample_key("openai", seed)));
        }
        // Bodies differ across vendors for the same seed.
        assert_ne!(
            &sample_key("anthropic", 1)[13..40],
            &sample_key("anthropic-admin", 1)[15..42]
        );
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
