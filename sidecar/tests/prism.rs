//! Conformance against Prism serving the vendors' own OpenAPI specs
//! (shared/reference/openapi): our probe requests must pass the specs'
//! request validation and a spec-shaped 2xx must classify as valid.
//!
//! Needs BYOK_PRISM_ANTHROPIC / BYOK_PRISM_OPENAI naming the base URLs of
//! running Prism mocks, so it is `#[ignore]`d by default;
//! `scripts/test.sh` starts Prism (`scripts/prism.sh`) and runs it with
//! `--ignored`.

use std::time::Duration;

use byok_core::Vendor;
use byok_sidecar::classify::Outcome;
use byok_sidecar::config::{Probe, Target};
use byok_sidecar::probe::Prober;
use zeroize::Zeroizing;

#[tokio::test]
#[ignore = "needs Prism serving the vendor specs: scripts/test.sh runs it with --ignored"]
async fn probes_conform_to_the_vendor_specs() {
    let (Ok(anthropic), Ok(openai)) = (
        std::env::var("BYOK_PRISM_ANTHROPIC"),
        std::env::var("BYOK_PRISM_OPENAI"),
    ) else {
        panic!("set BYOK_PRISM_ANTHROPIC and BYOK_PRISM_OPENAI: eval \"$(bash scripts/prism.sh start)\"");
    };
    let keys = [
        (
            Vendor::Anthropic,
            byok_core::samples::sample_key("anthropic", 1),
        ),
        (Vendor::OpenAi, byok_core::samples::sample_key("openai", 1)),
    ];
    for probe in [Probe::Completion, Probe::Models] {
        let p = if probe == Probe::Completion {
            "completion"
        } else {
            "models"
        };
        let prober = Prober::new(
            Target::new(&anthropic, probe, "claude-haiku-4-5"),
            Target::new(&openai, probe, "gpt-4o-mini"),
            Duration::from_secs(20),
        )
        .unwrap();
        for (vendor, key) in &keys {
            let r = prober.probe(*vendor, Zeroizing::new(key.clone())).await;
            assert_eq!(
                r.verdict.outcome,
                Outcome::Valid,
                "{vendor} {p}: {:?} {:?}",
                r.http_status,
                r.verdict.detail
            );
        }
    }
}
