//! DeiT-Tiny on the quantised device backend (feature `arm`): 8- and 4-bit linear weights keep
//! the `f32` model's top-1 class on most sample images, and hold less weight memory.
//!
//! Thresholds: on the first 16 sample images, q8 must agree with f32 on at least 15 and q4 on
//! at least 12 (`cargo xtask exp arm-quant` measures agreement on all 1000 images; see the
//! crate README). A broken quantisation (wrong scales, transposed blocks, lost bias) scrambles
//! the logits and agrees on about 1 in 1000 images.

#![cfg(feature = "arm")]
#![allow(clippy::unwrap_used)]

use std::path::Path;

use collab_backends::candle::quantized::{QuantizedCandleBackend, WeightBits, WeightMemory};
use collab_core::input::{ImagePreprocess, load_image_batch};
use collab_core::model::Input;
use collab_core::{Backend, fixtures};

const IMAGES: usize = 16;

/// Top-1 classes of the first `IMAGES` sample images, and the model's weight memory.
fn top1(bits: WeightBits) -> (Vec<u32>, WeightMemory) {
    let be = QuantizedCandleBackend::new(bits);
    let model = fixtures::deit_tiny(be.clone()).unwrap();
    let memory = be.memory();
    let imgs = fixtures::imagenet_sample().unwrap();
    let paths: Vec<&Path> = imgs[..IMAGES].iter().map(|i| i.path.as_path()).collect();
    let data = load_image_batch(&ImagePreprocess::imagenet(224), &paths).unwrap();
    let x = be.from_vec(data, &[IMAGES, 3, 224, 224]).unwrap();
    let logits = model.forward(&Input::Images(x)).unwrap();
    let top = be.index_to_vec(&be.argmax_last(&logits).unwrap()).unwrap();
    (top, memory)
}

fn agreement(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

#[test]
fn quantised_deit_keeps_top1_and_saves_memory() {
    let (f32_top, f32_mem) = top1(WeightBits::F32);
    let (q8_top, q8_mem) = top1(WeightBits::Q8);
    let (q4_top, q4_mem) = top1(WeightBits::Q4);
    let (a8, a4) = (agreement(&q8_top, &f32_top), agreement(&q4_top, &f32_top));
    println!(
        "agreement with f32 on {IMAGES} images: q8 {a8}, q4 {a4}; weight bytes f32 {} q8 {} q4 {}",
        f32_mem.total_bytes(),
        q8_mem.total_bytes(),
        q4_mem.total_bytes()
    );
    assert!(a8 >= 15, "q8 agrees with f32 on {a8} of {IMAGES} images");
    assert!(a4 >= 12, "q4 agrees with f32 on {a4} of {IMAGES} images");

    // DeiT-Tiny: 5.7 M parameters; every linear weight (4 per block, and the head) packed.
    assert_eq!(f32_mem.packed_weights, 0);
    assert_eq!(q8_mem.packed_weights, f32_mem.linear_weights);
    assert_eq!(q4_mem.packed_weights, f32_mem.linear_weights);
    assert!(
        q8_mem.total_bytes() * 3 < f32_mem.total_bytes(),
        "{q8_mem:?} vs {f32_mem:?}"
    );
    assert!(
        q4_mem.total_bytes() < q8_mem.total_bytes(),
        "{q4_mem:?} vs {q8_mem:?}"
    );
    assert_eq!(q8_mem.other_bytes, f32_mem.other_bytes);
}
