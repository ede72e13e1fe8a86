//! Fuzzes every built-in codec family's decoder through the server's two validation steps
//! (`check_request` on arrival, then `decode_activation`), as DeiT-Tiny's server at split 6
//! with split bases loaded, so the calibrated families decode too. The first input byte picks
//! the family, the second the rank; the rest is the payload (`cargo xtask fuzz` seeds the
//! corpus with a valid payload of each family). Nothing may panic, and libFuzzer's memory
//! limits (set by `cargo xtask fuzz`) turn any large allocation into a finding.

#![no_main]

use std::sync::OnceLock;

use collab_core::split::{Activation, CodecId};
use collab_net::wire::InferRequest;
use collab_net::wire::validate::{InputFacts, ModelFacts, check_and_decode};
use collab_policies::codec::CodecRegistry;
use collab_policies::svd::{SplitBases, SplitBasis};
use libfuzzer_sys::fuzz_target;

/// The split every payload enters at.
const SPLIT: u32 = 6;

struct Fixture {
    facts: ModelFacts,
    registry: CodecRegistry,
    bases: SplitBases,
    families: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Bases fitted on three fixed pseudo-random activations (a linear congruential
        // sequence: no RNG dependency in the fuzz build).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 6.0 - 3.0
        };
        let calibration: Vec<Activation> = (0..3)
            .map(|_| {
                let values = (0..197 * 192).map(|_| next()).collect();
                Activation::new(197, 192, values).expect("activation")
            })
            .collect();
        let mut bases = SplitBases::new("deit_tiny_patch16_224");
        let basis = SplitBasis::fit(&calibration, "fuzz").expect("fit");
        bases.insert(SPLIT as usize, basis).expect("insert");
        let registry = CodecRegistry::builtin();
        let families = registry.families().map(str::to_owned).collect();
        Fixture {
            facts: ModelFacts {
                model_id: "deit_tiny_patch16_224".into(),
                layers: 12,
                tokens: 197,
                features: 192,
                input: InputFacts::Image { side: 224 },
            },
            registry,
            bases,
            families,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let [pick, rank, payload @ ..] = data else {
        return;
    };
    let family = &f.families[usize::from(*pick) % f.families.len()];
    let Ok(codec) = format!("{family}-r{}", u32::from(*rank).max(1)).parse::<CodecId>() else {
        return;
    };
    let request = InferRequest {
        request_id: 1,
        split: SPLIT,
        codec,
        payload: payload.to_vec(),
        budget_ms: 100,
        max_loss: 0.0,
        meta: None,
    };
    let _ = check_and_decode(&f.facts, &f.registry, Some(&f.bases), request);
});
