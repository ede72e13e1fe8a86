//! CPU kernels of the candle backend, on plain `f32` slices: the work of a Transformer block
//! that candle does one scalar at a time (GELU with a scalar `erf` on one thread, the `exp` of
//! candle-nn's softmax), in an extra pass (the bias of a linear layer) or with extra copies.
//!
//! Each kernel is written once, branch-free, for the compiler to vectorise, and compiled twice
//! on x86-64: for the baseline (SSE2) and for AVX with FMA, picked at run time by
//! [`simd::Isa::detect`]. On aarch64 NEON and FMA are baseline, so one build suffices. Every
//! kernel is checked against f64 arithmetic in its tests, on both x86-64 paths, and through the
//! backend by the conformance suite; `collab-backends/benches/kernels.rs` times each against
//! the candle operation it replaces.
//!
//! Large inputs are split across rayon's pool (candle's own matmuls use the same pool, so the
//! kernels and gemm never run two pools of threads against each other).

pub mod elementwise;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub mod simd;
pub mod small_gemm;
pub mod softmax;
