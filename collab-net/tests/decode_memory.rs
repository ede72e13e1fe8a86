//! Hostile payloads cost a server bounded memory (issue 31): for every built-in codec family,
//! any bytes a device sends as its activation end in a decoded activation or a typed error,
//! and the server's two validation steps ([`check_request`] on arrival, [`decode_activation`]
//! on the compute thread) never hold more than a small bound above the payload itself.
//!
//! The bound is measured, not assumed: this test binary's global allocator counts the bytes
//! held and their peak since a mark (one test function, so nothing else runs beside it). The payloads are a valid payload of each
//! codec with its header's sizes overwritten by arbitrary values (tokens, features, rank: the
//! decompression bomb of issue 31 was 25 bytes declaring 197 x 192 at rank 0, or a huge
//! shape), bit flips, cuts, and random bytes. A personalisation upload (protocol 4) whose length
//! prefixes claim huge sizes is decoded within the same kind of bound.

use collab_core::split::{Activation, CodecId};
use collab_net::wire::validate::{
    Checked, InputFacts, ModelFacts, check_request, decode_activation,
};
use collab_net::wire::{InferRequest, RemoteError};
use collab_policies::codec::{CodecContext, CodecRegistry};
use collab_policies::svd::{SplitBases, SplitBasis};
use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Counts the bytes the process holds and their peak. Process-wide: this binary has one test,
/// so nothing else allocates while it measures.
#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// Starts a measurement: the peak is reset to what is held now, which is returned.
fn mark() -> usize {
    ALLOCATOR.reset_peak_usage();
    ALLOCATOR.current_usage()
}

/// Bytes held at most since `mark()` returned `base`, above `base`.
fn peak_since(base: usize) -> u64 {
    ALLOCATOR.peak_usage().saturating_sub(base) as u64
}

/// DeiT-Tiny's facts: 12 blocks, 197 tokens of 192 features, 224 x 224 images.
fn deit() -> ModelFacts {
    ModelFacts {
        model_id: "deit_tiny_patch16_224".into(),
        layers: 12,
        tokens: 197,
        features: 192,
        input: InputFacts::Image { side: 224 },
    }
}

const SPLIT: usize = 6;

/// The most the validation of one request may hold above its payload: 16 activations of the
/// model's full shape (the decoded values, a decoder's factors and products) and 1 MiB for
/// the codec and messages. A payload declaring more is refused before it is decoded.
fn bound(payload: usize) -> u64 {
    let activation = 197 * 192 * 4;
    (16 * activation + (1 << 20) + 2 * payload) as u64
}

fn activation(rng: &mut StdRng) -> Activation {
    let values = (0..197 * 192)
        .map(|_| rng.random_range(-3.0f32..3.0))
        .collect();
    Activation::new(197, 192, values).expect("activation")
}

/// Bases fitted at [`SPLIT`] on seeded random activations (what the calibrated codecs need).
fn bases() -> SplitBases {
    let mut rng = StdRng::seed_from_u64(7);
    let calibration: Vec<Activation> = (0..3).map(|_| activation(&mut rng)).collect();
    let mut bases = SplitBases::new("deit_tiny_patch16_224");
    let basis = SplitBasis::fit(&calibration, "random").expect("fit");
    bases.insert(SPLIT, basis).expect("insert");
    bases
}

/// One codec id per built-in family (rank 16 where it takes one) that builds at [`SPLIT`]
/// with [`bases`], and a valid payload of each.
fn payloads(registry: &CodecRegistry, bases: &SplitBases) -> Vec<(CodecId, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(11);
    let x = activation(&mut rng);
    let context = CodecContext {
        split: SPLIT,
        bases: Some(bases),
    };
    let mut out = vec![];
    for family in registry.families() {
        let id: CodecId = format!("{family}-r16").parse().expect("codec id");
        let Ok(codec) = registry.build(&id, &context) else {
            continue; // a family needing what these bases do not hold (weight bases)
        };
        let payload = codec.encode(&x).expect("encode");
        out.push((id, payload));
    }
    out
}

/// Both validation steps, as the server runs them, with the peak memory they held.
fn validate(
    registry: &CodecRegistry,
    bases: &SplitBases,
    id: &CodecId,
    payload: Vec<u8>,
) -> (Result<(), RemoteError>, u64) {
    let facts = deit();
    let request = InferRequest {
        request_id: 1,
        split: SPLIT as u32,
        codec: id.clone(),
        payload,
        budget_ms: 100,
        max_loss: 0.0,
        meta: None,
    };
    let base = mark();
    let result = check_request(&facts, registry, Some(bases), request).and_then(|c| match c {
        Checked::Encoded {
            codec,
            payload,
            meta,
        } => decode_activation(&facts, SPLIT, codec.as_ref(), &payload, meta.as_ref())
            .map(|h| assert_eq!(h.dims, [1, 197, 192], "{id}: a shape the model takes")),
        other => panic!("{id}: not an encoded payload: {other:?}"),
    });
    (result, peak_since(base))
}

/// Overwrites the little-endian `u32` at `at` (a header field) with `value`, if it fits.
fn poke(payload: &mut [u8], at: usize, value: u32) {
    if let Some(field) = payload.get_mut(at..at + 4) {
        field.copy_from_slice(&value.to_le_bytes());
    }
}

/// One test: the allocator's counts are process-wide.
#[test]
fn hostile_payloads_cost_bounded_memory() {
    bomb_and_huge_shapes_are_refused_before_decoding();
    every_codec_decodes_its_valid_payload_within_the_bound();
    damaged_payloads_cost_bounded_memory();
    personalise_uploads_claiming_huge_sizes_cost_bounded_memory();
}

/// A `PersonaliseRequest` (protocol 4) whose length prefixes claim huge sizes: every 5-byte
/// window after the frame header overwritten with the largest 32-bit varint. Each decode ends
/// in a request (then checked as the server checks it) or an error, holding at most 4 MiB
/// above twice the frame: a claimed length never sizes an allocation (serde caps a
/// preallocation at 1 MiB, and postcard's hint is bounded by the bytes left; measured peak
/// over all windows: about 3 KB).
fn personalise_uploads_claiming_huge_sizes_cost_bounded_memory() {
    use collab_core::distill::{Upload, UploadKind};
    use collab_net::wire::{Message, PersonaliseRequest, decode_frame, encode_frame};

    let upload = Upload {
        kind: UploadKind::Prototypes { group_size: 3 },
        classes: 10,
        vectors: vec![vec![0.1; 10]; 20],
        members: vec![3; 20],
    };
    let frame = encode_frame(&Message::PersonaliseRequest(PersonaliseRequest {
        request_id: 7,
        upload,
    }))
    .expect("encode");
    let len = frame.len();
    let (mut decoded, mut refused) = (0, 0);
    for at in 6..len.saturating_sub(5) {
        let mut hostile = frame.clone();
        hostile[at..at + 5].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let base = mark();
        match decode_frame(&hostile) {
            Ok(Message::PersonaliseRequest(r)) => {
                let _ = r.upload.check();
                decoded += 1;
            }
            Ok(_) => decoded += 1,
            Err(_) => refused += 1,
        }
        let peak = peak_since(base);
        assert!(
            peak <= (4 << 20) + 2 * len as u64,
            "{peak} bytes for a {len}-byte frame (window at {at})"
        );
    }
    assert!(
        refused > 0 && decoded + refused > 800,
        "{decoded} decoded, {refused} refused"
    );
}

fn bomb_and_huge_shapes_are_refused_before_decoding() {
    let (registry, bases) = (CodecRegistry::builtin(), bases());
    let svd: CodecId = "svd-r16".parse().expect("id");
    // Magic, version 1, kind 1 (request SVD), precision 0 (f32), 197 x 192 at rank 0.
    let mut bomb = vec![b'C', b'B', 1, 1, 0];
    for v in [197u32, 192, 0] {
        bomb.extend_from_slice(&v.to_le_bytes());
    }
    bomb.extend_from_slice(&0u64.to_le_bytes());
    let (result, peak) = validate(&registry, &bases, &svd, bomb.clone());
    let Err(RemoteError::Invalid(why)) = result else {
        panic!("rank 0 accepted: {result:?}");
    };
    assert!(why.contains("rank 0"), "{why}");
    assert!(
        peak < 64 << 10,
        "{peak} bytes for a refused 25-byte payload"
    );
    // The same header declaring 2^24 tokens (what made 524 MB of 25 bytes) at rank 1.
    poke(&mut bomb, 5, 1 << 24);
    poke(&mut bomb, 13, 1);
    let (result, peak) = validate(&registry, &bases, &svd, bomb);
    let Err(RemoteError::Invalid(why)) = result else {
        panic!("a huge shape accepted: {result:?}");
    };
    assert!(why.contains("the model expects 197 x 192"), "{why}");
    assert!(
        peak < 64 << 10,
        "{peak} bytes for a refused 25-byte payload"
    );
    // A well-formed rank-1 payload of 100,000 x 192: 0.4 MB that would decode to 77 MB.
    let mut amplified = vec![b'C', b'B', 1, 1, 0];
    for v in [100_000u32, 192, 1] {
        amplified.extend_from_slice(&v.to_le_bytes());
    }
    amplified.extend_from_slice(&0u64.to_le_bytes());
    amplified.extend(std::iter::repeat_n(1.0f32.to_le_bytes(), 100_000 + 192).flatten());
    let len = amplified.len();
    let (result, peak) = validate(&registry, &bases, &svd, amplified);
    let Err(RemoteError::Invalid(why)) = result else {
        panic!("an amplifying payload accepted: {result:?}");
    };
    assert!(why.contains("declares 100000 x 192"), "{why}");
    assert!(peak <= bound(len), "{peak} bytes for {len}");
}

fn every_codec_decodes_its_valid_payload_within_the_bound() {
    let (registry, bases) = (CodecRegistry::builtin(), bases());
    let all = payloads(&registry, &bases);
    assert!(all.len() >= 30, "only {} families built", all.len());
    let mut worst = (0.0, String::new());
    for (id, payload) in all {
        let len = payload.len();
        let (result, peak) = validate(&registry, &bases, &id, payload);
        assert!(result.is_ok(), "{id}: {result:?}");
        assert!(peak <= bound(len), "{id}: {peak} bytes for {len}");
        let ratio = peak as f64 / bound(len) as f64;
        if ratio > worst.0 {
            worst = (ratio, id.to_string());
        }
    }
    println!(
        "valid payloads: the most held is {:.2} of the bound ({})",
        worst.0, worst.1
    );
}

/// What is done to a valid payload.
#[derive(Clone, Debug)]
enum Damage {
    /// Header field at this offset (after any leading tag) set to this value.
    Field(usize, u32),
    /// Bits flipped at these positions (wrapped to the payload).
    Flip(Vec<usize>),
    /// Cut to this fraction of its length, in thousandths.
    Cut(u16),
    /// Replaced by these bytes.
    Random(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let sizes = prop_oneof![
        Just(0u32),
        Just(1),
        0u32..512,
        Just(197),
        Just(192),
        Just(1 << 24),
        any::<u32>(),
    ];
    prop_oneof![
        (
            prop_oneof![Just(5usize), Just(9), Just(13), Just(6), Just(10), Just(14)],
            sizes
        )
            .prop_map(|(at, v)| Damage::Field(at, v)),
        proptest::collection::vec(any::<usize>(), 1..4).prop_map(Damage::Flip),
        (0u16..1000).prop_map(Damage::Cut),
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(Damage::Random),
    ]
}

/// Any damage to any codec's payload: an answer or a typed `Invalid`, within the bound.
fn damaged_payloads_cost_bounded_memory() {
    let (registry, bases) = (CodecRegistry::builtin(), bases());
    let all = payloads(&registry, &bases);
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let worst = std::cell::Cell::new(0.0f64);
    let result = runner.run(&(any::<prop::sample::Index>(), damage()), |(pick, how)| {
        let (id, valid) = &all[pick.index(all.len())];
        let mut payload = valid.clone();
        match &how {
            Damage::Field(at, v) => poke(&mut payload, *at, *v),
            Damage::Flip(bits) => {
                for b in bits {
                    let i = b % (8 * payload.len());
                    payload[i / 8] ^= 1 << (i % 8);
                }
            }
            Damage::Cut(k) => payload.truncate(payload.len() * usize::from(*k) / 1000),
            Damage::Random(bytes) => payload.clone_from(bytes),
        }
        let len = payload.len();
        let (result, peak) = validate(&registry, &bases, id, payload);
        prop_assert!(
            matches!(result, Ok(()) | Err(RemoteError::Invalid(_))),
            "{id} {how:?}: {result:?}"
        );
        prop_assert!(
            peak <= bound(len),
            "{id} {how:?}: {peak} bytes held for {len}"
        );
        worst.set(worst.get().max(peak as f64 / bound(len) as f64));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    println!(
        "damaged payloads: the most held is {:.2} of the bound",
        worst.get()
    );
}
