//! Unit tests of the suite's helpers, and the reference against the whole suite.

use collab_core::Backend;

use super::host::{Host, pad, permute_source};
use super::tolerance::compare_values;
use super::*;
use crate::reference::ReferenceBackend;
use collab_core::seed::parse_u64;

#[test]
fn permute_source_inverts_permute() {
    let h = Host {
        data: (0..24).map(|v| v as f32).collect(),
        shape: vec![2, 3, 4],
    };
    let perm = [2, 0, 1];
    let src = permute_source(&h, &perm);
    assert_eq!(src.shape, vec![3, 4, 2]);
    let r = ReferenceBackend::new();
    let t = r.from_vec(src.data, &src.shape).expect("valid");
    let p = r.permute(&t, &perm).expect("valid");
    assert_eq!(r.to_vec(&p).expect("valid"), h.data);
}

#[test]
fn pad_then_narrow_is_identity() {
    let h = Host {
        data: (0..6).map(|v| v as f32).collect(),
        shape: vec![2, 3],
    };
    let p = pad(&h, 1, 2, 1, -1.0);
    assert_eq!(p.shape, vec![2, 6]);
    let r = ReferenceBackend::new();
    let t = r.from_vec(p.data, &p.shape).expect("valid");
    let n = r.narrow(&t, 1, 2, 3).expect("valid");
    assert_eq!(r.to_vec(&n).expect("valid"), h.data);
}

#[test]
fn compare_finds_the_worst() {
    let tol = Tolerance { abs: 0.1, rel: 0.0 };
    assert!(compare_values(&[1.0, 2.0], &[1.05, 2.0], tol, 1.0).is_none());
    let w = compare_values(&[1.0, 2.0, 3.0], &[1.5, 2.0, 4.0], tol, 1.0).expect("fails");
    assert_eq!((w.flat, w.bad), (2, 2));
    assert!(compare_values(&[f32::NAN], &[f64::NAN], Tolerance::EXACT, 1.0).is_none());
    assert!(compare_values(&[1.0], &[f64::NAN], tol, 1.0).is_some());
    assert!(compare_values(&[f32::INFINITY], &[1.0], tol, 1.0).is_some());
}

#[test]
fn seeds_parse() {
    assert_eq!(parse_u64("42"), Some(42));
    assert_eq!(parse_u64(" 0x2A "), Some(42));
    assert_eq!(parse_u64("nope"), None);
}

#[test]
fn the_reference_passes_every_family() {
    let r = ReferenceBackend::new();
    match check_all(&r, Tolerance::F32, 7, 3) {
        Ok(report) => assert!(report.checks > 100, "{report:?}"),
        Err(e) => panic!("{e}"),
    }
}
