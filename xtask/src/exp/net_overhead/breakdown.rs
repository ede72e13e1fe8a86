//! The parts of the network path's per-request cost that can be measured in isolation.

use std::time::{Duration, Instant};

use anyhow::Result;
use collab_core::cost::median;
use collab_net::wire::validate::{ModelFacts, check_and_decode};
use collab_net::wire::{
    InferRequest, InferResponse, Message, Prediction, decode_frame, encode_frame,
};
use collab_policies::codec::CodecRegistry;

use super::modes::Load;

/// Measured per-request costs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Costs {
    /// Encoding and decoding the request and response frames.
    pub(super) serialise: Duration,
    /// The server's validation, including the codec decode.
    pub(super) validate: Duration,
    /// Copies of the payload on the path (client frame buffer, kernel send, kernel receive,
    /// server frame decode).
    pub(super) copies: usize,
    /// Time of those copies.
    pub(super) copy_time: Duration,
}

/// Median of `reps` timings of `f`.
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(Duration::from_secs_f64(median(&t)))
}

pub(super) fn measure(load: &Load) -> Result<Costs> {
    let request = Message::InferRequest(InferRequest {
        request_id: 1,
        split: load.split as u32,
        codec: "int8".parse()?,
        payload: load.payload.clone(),
        budget_ms: 1000,
        max_loss: 1.0,
        meta: None,
    });
    let response = Message::InferResponse(InferResponse {
        request_id: 1,
        outcome: Ok(Prediction {
            top: (0..5).map(|i| (i, 1.0)).collect(),
            embedding: vec![],
            server_ms: 1.0,
            batch: 8,
        }),
    });
    let serialise = time(2000, || {
        for m in [&request, &response] {
            let bytes = encode_frame(m)?;
            std::hint::black_box(decode_frame(&bytes)?);
        }
        Ok(())
    })?;
    let cfg = load.model.config().encoder().clone();
    let facts = ModelFacts {
        model_id: "deit_tiny_patch16_224".into(),
        layers: cfg.layers,
        tokens: 197,
        features: cfg.hidden,
        input: collab_net::wire::validate::InputFacts::Image { side: 224 },
    };
    let Message::InferRequest(req) = &request else {
        unreachable!("built above")
    };
    // Both steps (the cheap checks, then the decode the compute thread does); the request is
    // cloned per repeat, since validation takes it (one payload copy, timed with it).
    let codecs = CodecRegistry::builtin();
    let validate = time(500, || {
        let checked = check_and_decode(&facts, &codecs, None, req.clone());
        std::hint::black_box(checked.map_err(|e| anyhow::anyhow!("{e}"))?);
        Ok(())
    })?;
    let copies = 4;
    let mut dst = vec![0u8; load.payload.len()];
    let one_copy = time(2000, || {
        dst.copy_from_slice(std::hint::black_box(&load.payload));
        std::hint::black_box(&dst);
        Ok(())
    })?;
    Ok(Costs {
        serialise,
        validate,
        copies,
        copy_time: one_copy * copies as u32,
    })
}

/// Read and write syscalls of this process so far (`syscr + syscw` of `/proc/self/io`), or
/// `None` where the file is not there.
pub(super) fn syscalls() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
    };
    Some(get("syscr:")? + get("syscw:")?)
}
