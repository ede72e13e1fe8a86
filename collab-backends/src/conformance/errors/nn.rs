//! Invalid arguments to softmax, the normalisations and attention.

use collab_core::Backend;
use rand::Rng;

use crate::conformance::harness::{Suite, Want, call};

impl<B: Backend> Suite<'_, B> {
    pub(super) fn nn_errors(&mut self) -> Option<()> {
        let b = self.b;
        let mut shape = self.shape(1..=3);
        let d = self.rng.random_range(2..=6);
        shape.push(d);
        let (x, xr) = self.plain(&shape)?;

        // softmax: a bias that does not broadcast, and one that broadcasts beyond x
        let (bad, badr) = self.plain(&[d + 1])?;
        let what = format!("softmax_last of {shape:?} with bias [{}]", d + 1);
        let g = call(|| b.softmax_last(&x, Some(&bad)));
        let r = self.r.softmax_last(&xr, Some(&badr));
        self.reject("softmax_last", &what, Want::Shape, r, g);
        let mut wider = vec![2];
        wider.extend(&shape);
        let (w, wr) = self.plain(&wider)?;
        let what = format!(
            "softmax_last of {shape:?} with bias {wider:?} (the bias must broadcast to x, not x to \
             the bias)"
        );
        let g = call(|| b.softmax_last(&x, Some(&w)));
        let r = self.r.softmax_last(&xr, Some(&wr));
        self.reject("softmax_last", &what, Want::Shape, r, g);

        // norms: parameters of the wrong length
        let (good, goodr) = self.plain(&[d])?;
        let what = format!("layer_norm of {shape:?} with gamma [{}]", d + 1);
        let g = call(|| b.layer_norm(&x, &bad, &good, 1e-5));
        let r = self.r.layer_norm(&xr, &badr, &goodr, 1e-5);
        self.reject("layer_norm", &what, Want::Shape, r, g);
        let what = format!("layer_norm of {shape:?} with beta [{}]", d + 1);
        let g = call(|| b.layer_norm(&x, &good, &bad, 1e-5));
        let r = self.r.layer_norm(&xr, &goodr, &badr, 1e-5);
        self.reject("layer_norm", &what, Want::Shape, r, g);
        let what = format!("rms_norm of {shape:?} with gamma [{}]", d + 1);
        let g = call(|| b.rms_norm(&x, &bad, 1e-5));
        let r = self.r.rms_norm(&xr, &badr, 1e-5);
        self.reject("rms_norm", &what, Want::Shape, r, g);

        // attention
        let (bs, h, n, m) = (
            self.rng.random_range(1..=2),
            self.rng.random_range(1..=2),
            self.size(),
            self.size(),
        );
        // ([q, k, v] shapes, bias shape, why it is invalid)
        type Case = ([Vec<usize>; 3], Option<Vec<usize>>, &'static str);
        let cases: Vec<Case> = vec![
            (
                [vec![bs, h, n, d], vec![bs, h, m, d + 1], vec![bs, h, m, d]],
                None,
                "q and k head sizes differ",
            ),
            (
                [vec![bs, h, n, d], vec![bs, h, m, d], vec![bs, h, m + 1, d]],
                None,
                "k and v lengths differ",
            ),
            (
                [vec![bs * h, n, d], vec![bs * h, m, d], vec![bs * h, m, d]],
                None,
                "rank-3 inputs",
            ),
            (
                [
                    vec![bs, h, n, d],
                    vec![bs, h + 1, m, d],
                    vec![bs, h + 1, m, d],
                ],
                None,
                "head counts differ",
            ),
            (
                [vec![bs, h, n, d], vec![bs, h, m, d], vec![bs, h, m, d]],
                Some(vec![m + 1]),
                "a bias that does not broadcast",
            ),
        ];
        for ([sq, sk, sv], sbias, why) in cases {
            let (q, qr) = self.plain(&sq)?;
            let (k, kr) = self.plain(&sk)?;
            let (v, vr) = self.plain(&sv)?;
            let what = format!("attention of q {sq:?}, k {sk:?}, v {sv:?}, bias {sbias:?} ({why})");
            match sbias {
                None => {
                    let g = call(|| b.attention(&q, &k, &v, 0.5, None));
                    let r = self.r.attention(&qr, &kr, &vr, 0.5, None);
                    self.reject("attention", &what, Want::Shape, r, g);
                }
                Some(sb) => {
                    let (bias, biasr) = self.plain(&sb)?;
                    let g = call(|| b.attention(&q, &k, &v, 0.5, Some(&bias)));
                    let r = self.r.attention(&qr, &kr, &vr, 0.5, Some(&biasr));
                    self.reject("attention", &what, Want::Shape, r, g);
                }
            }
        }
        Some(())
    }
}
