//! Holds every backend of this crate to the conformance suite (`collab_backends::conformance`).
//!
//! Each module below has one test per primitive family; each test prints its seed, and
//! `COLLAB_CONFORMANCE_SEED=<seed>` replays it.

use collab_backends::backend_conformance;

backend_conformance!(
    reference,
    collab_backends::reference::ReferenceBackend::new()
);

#[cfg(feature = "candle")]
backend_conformance!(candle_cpu, collab_backends::candle::CandleBackend::cpu());

// The profiling wrapper forwards every primitive unchanged.
#[cfg(feature = "candle")]
backend_conformance!(
    profiled_candle_cpu,
    collab_backends::profiled::Profiled::new(collab_backends::candle::CandleBackend::cpu())
);

#[cfg(feature = "candle")]
backend_conformance!(
    candle_autograd,
    collab_backends::candle::CandleBackend::differentiable()
);

#[cfg(feature = "tch")]
backend_conformance!(tch_cpu, collab_backends::tch::TchBackend::cpu());

// candle on CUDA device 0. Built only with the `cuda` feature, which is for GPU machines: a
// build with it but no device that opens (on a CPU machine the build's libcuda stub answers
// `CUDA_ERROR_STUB_LIBRARY`) fails these tests, saying so, rather than passing unchecked.
#[cfg(feature = "cuda")]
backend_conformance!(
    candle_cuda,
    match candle_core::Device::new_cuda(0) {
        Ok(device) => collab_backends::candle::CandleBackend::on(device),
        Err(e) => panic!(
            "candle_cuda: built with the `cuda` feature but no CUDA device opens ({e}); \
             run these tests on a GPU machine"
        ),
    }
);

// The quantised device backend (feature `arm`): values at the f32 tolerance; results through
// a `linear_weight` weight at the precision's weight tolerance (measured worst errors and the
// derivation in the crate README).
#[cfg(feature = "arm")]
backend_conformance!(
    arm_f32,
    collab_backends::candle::quantized::QuantizedCandleBackend::new(
        collab_backends::candle::quantized::WeightBits::F32
    )
);

#[cfg(feature = "arm")]
backend_conformance!(
    arm_q8,
    collab_backends::candle::quantized::QuantizedCandleBackend::new(
        collab_backends::candle::quantized::WeightBits::Q8
    ),
    collab_backends::conformance::Tolerance::F32,
    collab_backends::conformance::Tolerance::Q8_WEIGHTS
);

#[cfg(feature = "arm")]
backend_conformance!(
    arm_q4,
    collab_backends::candle::quantized::QuantizedCandleBackend::new(
        collab_backends::candle::quantized::WeightBits::Q4
    ),
    collab_backends::conformance::Tolerance::F32,
    collab_backends::conformance::Tolerance::Q4_WEIGHTS
);
