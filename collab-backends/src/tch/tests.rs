//! Tests of what the conformance suite does not reach: the shared handles (aliasing, threads,
//! no autograd), the index bound, the device constructors.
#![allow(clippy::unwrap_used)]

use collab_core::{Backend, Error};

use super::TchBackend;

#[test]
fn an_operand_may_appear_twice_and_handles_cross_threads() {
    let b = TchBackend::cpu();
    let a = b.from_vec(vec![1.0, 2.0, 3.0], &[3]).unwrap();
    let twice = b.add(&a, &a).unwrap();
    assert_eq!(b.to_vec(&twice).unwrap(), [2.0, 4.0, 6.0]);
    let squares: Vec<Vec<f32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| b.to_vec(&b.mul(&a, &a).unwrap()).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(squares.iter().all(|v| v == &[1.0, 4.0, 9.0]));
    // The input is unchanged by the operations on it.
    assert_eq!(b.to_vec(&a).unwrap(), [1.0, 2.0, 3.0]);
}

#[test]
fn no_result_requires_a_gradient() {
    let b = TchBackend::cpu();
    let x = b.from_vec(vec![0.5; 6], &[2, 3]).unwrap();
    let w = b.linear_weight(vec![0.25; 12], &[4, 3]).unwrap();
    let y = b.linear(&x, &w, None).unwrap();
    let p = b.softmax_last(&y, None).unwrap();
    for t in [&x, &w, &y, &p] {
        assert!(!t.get().requires_grad());
    }
}

#[test]
fn indices_round_trip_the_whole_u32_range() {
    let b = TchBackend::cpu();
    let data = vec![0, 7, u32::MAX, 1 << 31];
    let i = b.index_from_vec(data.clone(), &[2, 2]).unwrap();
    assert_eq!(b.index_to_vec(&i).unwrap(), data);
    assert_eq!(b.index_dims(&i), [2, 2]);
}

#[test]
fn a_loose_index_bound_falls_back_to_the_true_maximum() {
    let b = TchBackend::cpu();
    // argsort over 6 entries gives indices bounded by 6; narrowed to its first 2 columns of a
    // sorted row they are {0, 1} and fit a dimension of size 3.
    let x = b.from_vec(vec![0., 1., 2., 3., 4., 5.], &[1, 6]).unwrap();
    let order = b.argsort_last(&x, false).unwrap();
    let first = b.index_narrow(&order, 1, 0, 2).unwrap();
    let t = b.from_vec(vec![10., 20., 30.], &[1, 3]).unwrap();
    let g = b.gather(&t, 1, &first).unwrap();
    assert_eq!(b.to_vec(&g).unwrap(), [10., 20.]);
    // The last two are {4, 5}: out of range.
    let last = b.index_narrow(&order, 1, 4, 2).unwrap();
    let e = b.gather(&t, 1, &last).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "gather", .. }), "{e}");
}

#[test]
fn names_and_cuda_availability() {
    assert_eq!(TchBackend::cpu().name(), "tch-cpu");
    match TchBackend::cuda(0) {
        Ok(b) => assert_eq!(b.name(), "tch-cuda:0"),
        Err(e) => {
            assert!(matches!(e, Error::Backend { op: "cuda", .. }), "{e}");
            assert_eq!(TchBackend::cuda_if_available().name(), "tch-cpu");
        }
    }
    let e = TchBackend::cuda(usize::MAX).unwrap_err();
    assert!(matches!(e, Error::Backend { op: "cuda", .. }), "{e}");
}
