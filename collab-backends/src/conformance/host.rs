//! Tensors on the host, and the layouts (routes) by which inputs reach the backend under
//! test.

/// A tensor on the host: row-major values and a shape.
#[derive(Clone, Debug)]
pub(super) struct Host<T> {
    pub(super) data: Vec<T>,
    pub(super) shape: Vec<usize>,
}

pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

pub(super) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        if shape[d] > 0 {
            idx[d] = flat % shape[d];
            flat /= shape[d];
        }
    }
    idx
}

pub(super) fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(strides(shape)).map(|(i, s)| i * s).sum()
}

/// The tensor `src` such that `permute(src, perm) == h`.
pub(super) fn permute_source<T: Copy + Default>(h: &Host<T>, perm: &[usize]) -> Host<T> {
    let mut shape = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        shape[p] = h.shape[i];
    }
    let mut data = vec![T::default(); h.data.len()];
    for (f, &v) in h.data.iter().enumerate() {
        let idx = unravel(f, &h.shape);
        let mut j = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            j[p] = idx[i];
        }
        data[ravel(&j, &shape)] = v;
    }
    Host { data, shape }
}

/// `h` padded along `dim` with `before` and `after` entries of `fill`.
pub(super) fn pad<T: Copy>(
    h: &Host<T>,
    dim: usize,
    before: usize,
    after: usize,
    fill: T,
) -> Host<T> {
    let mut shape = h.shape.clone();
    shape[dim] += before + after;
    let mut data = vec![fill; shape.iter().product()];
    for (f, &v) in h.data.iter().enumerate() {
        let mut idx = unravel(f, &h.shape);
        idx[dim] += before;
        data[ravel(&idx, &shape)] = v;
    }
    Host { data, shape }
}

/// How an input reaches the backend under test.
#[derive(Clone, Debug)]
pub(super) enum Route {
    /// `from_vec`.
    Direct,
    /// `permute(from_vec(src), perm)`.
    Permuted(Vec<usize>),
    /// `narrow(from_vec(padded), dim, before, len)`.
    Narrowed {
        dim: usize,
        before: usize,
        after: usize,
    },
}

pub(super) fn describe_route(name: &str, shape: &[usize], route: &Route) -> String {
    match route {
        Route::Direct => format!("{name} {shape:?}"),
        Route::Permuted(perm) => {
            let mut src = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                src[p] = shape[i];
            }
            format!("{name} {shape:?} (a view: permute {perm:?} of {src:?})")
        }
        Route::Narrowed { dim, before, after } => {
            let mut src = shape.to_vec();
            src[*dim] += before + after;
            format!(
                "{name} {shape:?} (a view: narrow dim {dim} start {before} len {} of {src:?})",
                shape[*dim]
            )
        }
    }
}
