//! The codec on the real DeiT-Tiny at split 6, beside collab's `int8` and `tpca` (its PCA
//! basis fitted on 32 other images): top-1 against the labels, agreement with the unsplit
//! model and bytes per request on 48 ImageNet sample images. Prints one row per codec.

use collab_backends::candle::CandleBackend;
use collab_bench::codec_eval::{SplitData, evaluate};
use collab_core::fixtures;
use collab_core::split::ActivationCodec;
use collab_policies::codec::{CodecContext, CodecRegistry};
use {{crate}}::UniformQuant;

const SPLIT: usize = 6;

#[test]
fn against_int8_and_tpca_on_deit_tiny() {
    let model = fixtures::deit_tiny(CandleBackend::cpu()).expect("the DeiT-Tiny fixture");
    let images = fixtures::imagenet_sample().expect("the ImageNet sample");
    // Every 10th image for the evaluation, the ones after them for the PCA fit.
    let eval: Vec<_> = images.iter().step_by(10).take(48).cloned().collect();
    let calib: Vec<_> = images
        .iter()
        .skip(5)
        .step_by(10)
        .take(32)
        .cloned()
        .collect();
    let data = SplitData::collect(&model, &eval, SPLIT).expect("activations");
    let bases = SplitData::collect(&model, &calib, SPLIT)
        .and_then(|c| c.fit_bases("deit_tiny_patch16_224"))
        .expect("bases");
    let context = CodecContext {
        split: SPLIT,
        bases: Some(&bases),
    };
    let registry = CodecRegistry::builtin();
    let mine = UniformQuant::new(4).expect("codec");
    let int8 = registry
        .build(&"int8".parse().expect("id"), &context)
        .expect("int8");
    let tpca = registry
        .build(&"tpca-r32".parse().expect("id"), &context)
        .expect("tpca");
    let codecs: [&dyn ActivationCodec; 3] = [&mine, int8.as_ref(), tpca.as_ref()];
    let mut rows = vec![];
    for codec in codecs {
        let row = evaluate(&model, &data, codec).expect("evaluation");
        println!("{row}");
        rows.push(row);
    }
    let f32_bytes = (197 * 192 * 4) as f64;
    assert!(
        rows[0].bytes < f32_bytes / 4.0,
        "4 bits send less than int8"
    );
    assert!(
        rows[0].agreement >= 0.5,
        "the codec keeps most answers: {}",
        rows[0]
    );
}
