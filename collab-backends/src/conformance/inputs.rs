//! Random draws (sizes, shapes, values, indices, permutations) and the building of inputs on
//! both backends along random routes.

use std::ops::RangeInclusive;

use collab_core::Backend;
use rand::Rng;
use rand::seq::SliceRandom;

use super::harness::{Suite, call};
use super::host::{Host, Route, describe_route, pad, permute_source};
use crate::reference::{RefIndex, RefTensor};

impl<B: Backend> Suite<'_, B> {
    // ----- random draws -----

    pub(super) fn size(&mut self) -> usize {
        self.rng.random_range(1..=7)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    pub(super) fn shape(&mut self, ranks: RangeInclusive<usize>) -> Vec<usize> {
        let rank = self.rng.random_range(ranks);
        (0..rank).map(|_| self.size()).collect()
    }

    pub(super) fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    pub(super) fn host(&mut self, shape: &[usize], lo: f32, hi: f32) -> Host<f32> {
        Host {
            data: self.uniform(shape.iter().product(), lo, hi),
            shape: shape.to_vec(),
        }
    }

    pub(super) fn indices(&mut self, shape: &[usize], bound: usize) -> Host<u32> {
        let n = shape.iter().product();
        Host {
            data: (0..n).map(|_| self.below(bound) as u32).collect(),
            shape: shape.to_vec(),
        }
    }

    pub(super) fn permutation(&mut self, rank: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..rank).collect();
        p.shuffle(&mut self.rng);
        p
    }

    /// A shape that broadcasts to `out`: a suffix of it with some dimensions set to 1.
    pub(super) fn broadcastable_to(&mut self, out: &[usize]) -> Vec<usize> {
        let rank = self.rng.random_range(1..=out.len().max(1)).min(out.len());
        out[out.len() - rank..]
            .iter()
            .map(|&d| if self.chance(0.3) { 1 } else { d })
            .collect()
    }

    fn pick_route(&mut self, shape: &[usize]) -> Route {
        match self.below(4) {
            2 if shape.len() >= 2 => {
                let mut perm = self.permutation(shape.len());
                if perm.iter().enumerate().all(|(i, &p)| i == p) {
                    perm.swap(0, shape.len() - 1);
                }
                Route::Permuted(perm)
            }
            2 | 3 if !shape.is_empty() => {
                let dim = self.below(shape.len());
                let before = self.below(3);
                let after = if before == 0 {
                    1 + self.below(2)
                } else {
                    self.below(3)
                };
                Route::Narrowed { dim, before, after }
            }
            _ => Route::Direct,
        }
    }

    // ----- inputs -----

    /// Builds `h` on the backend under test along `route`.
    fn build(&mut self, name: &str, h: &Host<f32>, route: &Route) -> Option<(B::Tensor, String)> {
        let b = self.b;
        let desc = describe_route(name, &h.shape, route);
        let t = match route {
            Route::Direct => {
                let g = call(|| b.from_vec(h.data.clone(), &h.shape));
                self.got("from_vec", &format!("building {desc}"), g)?
            }
            Route::Permuted(perm) => {
                let src = permute_source(h, perm);
                let g = call(|| b.from_vec(src.data.clone(), &src.shape));
                let s = self.got("from_vec", &format!("building {desc}"), g)?;
                let g = call(|| b.permute(&s, perm));
                self.got("permute", &format!("building {desc}"), g)?
            }
            Route::Narrowed { dim, before, after } => {
                let src = pad(h, *dim, *before, *after, f32::NAN);
                let g = call(|| b.from_vec(src.data.clone(), &src.shape));
                let s = self.got("from_vec", &format!("building {desc}"), g)?;
                let g = call(|| b.narrow(&s, *dim, *before, h.shape[*dim]));
                self.got("narrow", &format!("building {desc}"), g)?
            }
        };
        Some((t, desc))
    }

    /// `h` on the backend under test (along a random route) and on the reference.
    pub(super) fn input(
        &mut self,
        name: &str,
        h: &Host<f32>,
    ) -> Option<(B::Tensor, RefTensor, String)> {
        let route = self.pick_route(&h.shape);
        self.input_via(name, h, &route)
    }

    pub(super) fn input_via(
        &mut self,
        name: &str,
        h: &Host<f32>,
        route: &Route,
    ) -> Option<(B::Tensor, RefTensor, String)> {
        let (t, desc) = self.build(name, h, route)?;
        let r = self.r.from_vec(h.data.clone(), &h.shape);
        let r = self.reference("from_vec", &desc, r)?;
        Some((t, r, desc))
    }

    /// Index tensor `h` on both backends, directly or as a narrowed view.
    pub(super) fn index_input(
        &mut self,
        name: &str,
        h: &Host<u32>,
    ) -> Option<(B::Index, RefIndex, String)> {
        let b = self.b;
        let (t, desc) = if !h.shape.is_empty() && self.chance(0.4) {
            let dim = self.below(h.shape.len());
            let before = self.below(3);
            let after = 1 + self.below(2);
            let desc = describe_route(name, &h.shape, &Route::Narrowed { dim, before, after });
            let src = pad(h, dim, before, after, u32::MAX);
            let g = call(|| b.index_from_vec(src.data.clone(), &src.shape));
            let s = self.got("index_from_vec", &format!("building {desc}"), g)?;
            let g = call(|| b.index_narrow(&s, dim, before, h.shape[dim]));
            (
                self.got("index_narrow", &format!("building {desc}"), g)?,
                desc,
            )
        } else {
            let desc = format!("{name} {:?}", h.shape);
            let g = call(|| b.index_from_vec(h.data.clone(), &h.shape));
            (
                self.got("index_from_vec", &format!("building {desc}"), g)?,
                desc,
            )
        };
        let r = self.r.index_from_vec(h.data.clone(), &h.shape);
        let r = self.reference("index_from_vec", &desc, r)?;
        Some((t, r, desc))
    }
}
