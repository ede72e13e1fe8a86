//! Unit tests of the reference backend against hand-computed values.

#![allow(clippy::unwrap_used)]

use collab_core::{Backend, Error};

use super::*;

fn b() -> ReferenceBackend {
    ReferenceBackend::new()
}

fn t(data: &[f32], shape: &[usize]) -> RefTensor {
    b().from_vec(data.to_vec(), shape).unwrap()
}

fn idx(data: &[u32], shape: &[usize]) -> RefIndex {
    b().index_from_vec(data.to_vec(), shape).unwrap()
}

fn vals(t: &RefTensor) -> Vec<f64> {
    t.array().iter().copied().collect()
}

fn close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn matmul_2x3_by_3x2() {
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let m = t(&[7., 8., 9., 10., 11., 12.], &[3, 2]);
    let c = b().matmul(&a, &m).unwrap();
    assert_eq!(b().dims(&c), vec![2, 2]);
    close(&vals(&c), &[58., 64., 139., 154.]);
}

#[test]
fn matmul_batched_and_shared_rhs() {
    let a = t(&[1., 2., 3., 4., 5., 6., 7., 8.], &[2, 2, 2]);
    let eye = t(&[1., 0., 0., 1.], &[2, 2]);
    let c = b().matmul(&a, &eye).unwrap();
    close(&vals(&c), &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let swap = t(&[0., 1., 1., 0., 2., 0., 0., 2.], &[2, 2, 2]);
    let c = b().matmul(&a, &swap).unwrap();
    close(&vals(&c), &[2., 1., 4., 3., 10., 12., 14., 16.]);
    assert!(matches!(
        b().matmul(&a, &t(&[0.; 6], &[3, 2])),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        b().matmul(&a, &t(&[0.; 12], &[3, 2, 2])),
        Err(Error::Shape { .. })
    ));
    assert!(b().matmul(&eye, &swap).is_err(), "2-D lhs with 3-D rhs");
}

#[test]
fn matmul_of_transposed_views_with_unit_dims() {
    // Column vector times row vector, both transposed views: `dot` then returns a
    // column-major array, which must still be read in logical order.
    let col = b().permute(&t(&[1., 2., 3.], &[1, 3]), &[1, 0]).unwrap();
    let row = b().permute(&t(&[10., 20.], &[2, 1]), &[1, 0]).unwrap();
    let c = b().matmul(&col, &row).unwrap();
    assert_eq!(b().dims(&c), vec![3, 2]);
    close(&vals(&c), &[10., 20., 20., 40., 30., 60.]);
    let c = b().to_vec(&c).unwrap();
    assert_eq!(c, vec![10., 20., 20., 40., 30., 60.]);
}

#[test]
fn softmax_of_zero_and_ln2() {
    let x = t(&[0.0, std::f32::consts::LN_2], &[1, 2]);
    let y = b().softmax_last(&x, None).unwrap();
    // ln 2 in f32 is not exactly ln 2: compare with the f32 input's exact softmax.
    let l = f64::from(std::f32::consts::LN_2);
    close(
        &vals(&y),
        &[1.0 / (1.0 + l.exp()), l.exp() / (1.0 + l.exp())],
    );
    assert!((vals(&y)[0] - 1.0 / 3.0).abs() < 1e-7);
    let bias = t(&[0.0, f32::NEG_INFINITY], &[2]);
    let y = b().softmax_last(&x, Some(&bias)).unwrap();
    close(&vals(&y), &[1.0, 0.0]);
    let wide = t(&[0.0; 4], &[2, 2]);
    assert!(b().softmax_last(&x, Some(&wide)).is_err());
}

#[test]
fn layer_norm_and_rms_norm() {
    let x = t(&[1., 2., 3., 4.], &[1, 4]);
    let g = t(&[1., 1., 2., 2.], &[4]);
    let be = t(&[0., 0., 0., 1.], &[4]);
    let y = b().layer_norm(&x, &g, &be, 0.0).unwrap();
    let s = 1.25f64.sqrt();
    close(
        &vals(&y),
        &[-1.5 / s, -0.5 / s, 2.0 * 0.5 / s, 2.0 * 1.5 / s + 1.0],
    );
    let y = b().rms_norm(&x, &g, 0.0).unwrap();
    let r = 7.5f64.sqrt();
    close(&vals(&y), &[1. / r, 2. / r, 6. / r, 8. / r]);
    assert!(b().layer_norm(&x, &t(&[1.; 3], &[3]), &be, 1e-5).is_err());
}

#[test]
fn broadcasting_2x1_plus_3() {
    let a = t(&[1., 2.], &[2, 1]);
    let c = t(&[10., 20., 30.], &[3]);
    let s = b().add(&a, &c).unwrap();
    assert_eq!(b().dims(&s), vec![2, 3]);
    close(&vals(&s), &[11., 21., 31., 12., 22., 32.]);
    let d = b().sub(&c, &a).unwrap();
    close(&vals(&d), &[9., 19., 29., 8., 18., 28.]);
    let bad = b().mul(&t(&[0.; 6], &[2, 3]), &t(&[0.; 4], &[4]));
    assert!(
        matches!(bad, Err(Error::Shape { op: "mul", .. })),
        "{bad:?}"
    );
}

#[test]
fn argsort_ties_are_stable() {
    let x = t(&[2., 1., 2., 1., 3.], &[5]);
    let asc = b().argsort_last(&x, false).unwrap();
    assert_eq!(b().index_to_vec(&asc).unwrap(), vec![1, 3, 0, 2, 4]);
    let desc = b().argsort_last(&x, true).unwrap();
    assert_eq!(b().index_to_vec(&desc).unwrap(), vec![4, 0, 2, 1, 3]);
    let eq = t(&[5.; 6], &[2, 3]);
    let d = b().argsort_last(&eq, true).unwrap();
    assert_eq!(b().index_to_vec(&d).unwrap(), vec![0, 1, 2, 0, 1, 2]);
    let am = b()
        .argmax_last(&t(&[1., 3., 3., 0., 0., 0.], &[2, 3]))
        .unwrap();
    assert_eq!(b().index_dims(&am), vec![2, 1]);
    assert_eq!(b().index_to_vec(&am).unwrap(), vec![1, 0]);
}

#[test]
fn scatter_add_accumulates_repeats() {
    let base = t(&[0.; 6], &[2, 3]);
    let i = idx(&[0, 0, 2, 1, 1, 1], &[2, 3]);
    let src = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let out = b().scatter_add(&base, 1, &i, &src).unwrap();
    close(&vals(&out), &[3., 0., 3., 0., 15., 0.]);
    let i0 = idx(&[1, 1, 1], &[1, 3]);
    let s0 = t(&[1., 2., 3.], &[1, 3]);
    let out = b().scatter_add(&base, 0, &i0, &s0).unwrap();
    close(&vals(&out), &[0., 0., 0., 1., 2., 3.]);
    let bad = idx(&[0, 3, 0, 0, 0, 0], &[2, 3]);
    assert!(matches!(
        b().scatter_add(&base, 1, &bad, &src),
        Err(Error::Backend { .. })
    ));
}

#[test]
fn gather_and_index_select() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let g = b().gather(&x, 1, &idx(&[2, 0, 1, 1], &[2, 2])).unwrap();
    assert_eq!(b().dims(&g), vec![2, 2]);
    close(&vals(&g), &[3., 1., 5., 5.]);
    // idx smaller than the input in a non-gathered dimension.
    let g = b().gather(&x, 0, &idx(&[1, 0], &[1, 2])).unwrap();
    close(&vals(&g), &[4., 2.]);
    let s = b().index_select(&x, 1, &idx(&[2, 2, 0], &[3])).unwrap();
    close(&vals(&s), &[3., 3., 1., 6., 6., 4.]);
    assert!(b().gather(&x, 1, &idx(&[0; 9], &[3, 3])).is_err());
    assert!(b().index_select(&x, 0, &idx(&[2], &[1])).is_err());
    let ig = b()
        .index_gather(&idx(&[7, 8, 9], &[3]), 0, &idx(&[2, 2], &[2]))
        .unwrap();
    assert_eq!(b().index_to_vec(&ig).unwrap(), vec![9, 9]);
}

#[test]
fn layout_ops() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let p = b().permute(&x, &[1, 0]).unwrap();
    close(&vals(&p), &[1., 4., 2., 5., 3., 6.]);
    assert!(b().permute(&x, &[0, 0]).is_err());
    let n = b().narrow(&x, 1, 1, 2).unwrap();
    close(&vals(&n), &[2., 3., 5., 6.]);
    assert!(b().narrow(&x, 1, 2, 2).is_err());
    assert!(b().narrow(&x, 2, 0, 1).is_err());
    let c = b().cat(&[&x, &n], 1).unwrap();
    close(&vals(&c), &[1., 2., 3., 2., 3., 4., 5., 6., 5., 6.]);
    assert!(b().cat(&[&x, &n], 0).is_err());
    assert!(b().cat(&[], 0).is_err());
    assert!(b().reshape(&x, &[4]).is_err());
    assert_eq!(
        b().dims(&b().reshape(&x, &[3, 1, 2]).unwrap()),
        vec![3, 1, 2]
    );
    assert!(b().from_vec(vec![1.0; 5], &[2, 3]).is_err());
}

#[test]
#[allow(clippy::excessive_precision)]
fn erf_is_accurate() {
    // Values from high-precision tables.
    let cases = [
        (0.1, 0.112_462_916_018_284_9),
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (1.5, 0.966_105_146_475_310_7),
        (2.0, 0.995_322_265_018_952_7),
        (3.0, 0.999_977_909_503_001_4),
    ];
    for (x, want) in cases {
        let got = erf(x);
        assert!((got - want).abs() <= 2e-16, "erf({x}) = {got}, want {want}");
        assert!((erf(-x) + want).abs() <= 2e-16);
    }
    let tails = [
        (1.0, 0.157_299_207_050_285_13),
        (2.0, 4.677_734_981_047_265_8e-3),
        (3.0, 2.209_049_699_858_544_1e-5),
        (5.0, 1.537_459_794_428_034_9e-12),
        (10.0, 2.088_487_583_762_544_8e-45),
    ];
    for (x, want) in tails {
        let got = erfc(x);
        assert!(
            ((got - want) / want).abs() <= 1e-13,
            "erfc({x}) = {got}, want {want}"
        );
    }
    let g = b().gelu_erf(&t(&[1.0, -1.0, 0.0], &[3])).unwrap();
    close(
        &vals(&g),
        &[0.841_344_746_068_542_9, -0.158_655_253_931_457_05, 0.0],
    );
}

#[test]
fn silu_and_unary() {
    let x = t(&[0.0, 1.0, -1.0], &[3]);
    let s = b().silu(&x).unwrap();
    let e = std::f64::consts::E;
    close(&vals(&s), &[0.0, 1.0 / (1.0 + 1.0 / e), -1.0 / (1.0 + e)]);
    let a = b().affine(&x, 2.0, 0.5).unwrap();
    close(&vals(&a), &[0.5, 2.5, -1.5]);
    let m = b().max_keepdim(&t(&[1., 5., 3., 2.], &[2, 2]), 0).unwrap();
    assert_eq!(b().dims(&m), vec![1, 2]);
    close(&vals(&m), &[3., 5.]);
    let mean = b().mean_keepdim(&t(&[1., 5., 3., 2.], &[2, 2]), 1).unwrap();
    close(&vals(&mean), &[3., 2.5]);
    assert!(b().sum_keepdim(&x, 1).is_err());
}
