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

#[cfg(feature = "candle")]
backend_conformance!(
    candle_autograd,
    collab_backends::candle::CandleBackend::differentiable()
);
