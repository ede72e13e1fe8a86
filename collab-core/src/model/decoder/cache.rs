//! The KV cache: per layer, the rotated keys and the values of every token attended so far.

use crate::{Backend, Error, Result};

/// The keys or the values of one layer, `[heads, t, head_dim]` (`None` while empty).
#[derive(Clone, Debug)]
struct Entries<B: Backend> {
    tensor: Option<B::Tensor>,
    tokens: usize,
}

impl<B: Backend> Entries<B> {
    fn empty() -> Self {
        Self {
            tensor: None,
            tokens: 0,
        }
    }

    /// Appends `new [heads, n, head_dim]` and returns all the entries.
    fn append(&mut self, backend: &B, new: B::Tensor) -> Result<B::Tensor> {
        let (all, n) = append(backend, self.tensor.as_ref(), new)?;
        self.tensor = Some(all.clone());
        self.tokens += n;
        Ok(all)
    }
}

/// Keys and values of one layer.
#[derive(Clone, Debug)]
struct LayerKv<B: Backend> {
    keys: Entries<B>,
    values: Entries<B>,
}

/// The KV cache of one sequence: per decoder layer, the keys (after RoPE) and values of every
/// token processed so far, each `[heads, t, head_dim]`.
///
/// Contract: the attention operators extend it. `Q K^T` appends the new keys and `P V`
/// appends the new values, so between those two operators a layer holds one more key token
/// than value tokens; after a whole pass every layer holds the same count. A cache lives on
/// the side where its layer's attention runs; the split executor keeps one per side.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerKv<B>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        KvCache {
            layers: (0..layers)
                .map(|_| LayerKv {
                    keys: Entries::empty(),
                    values: Entries::empty(),
                })
                .collect(),
        }
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Empties every layer.
    pub fn clear(&mut self) {
        *self = Self::new(self.layers.len());
    }

    fn layer(&self, layer: usize) -> Result<&LayerKv<B>> {
        self.layers.get(layer).ok_or_else(|| {
            Error::InvalidInput(format!(
                "layer {layer} is outside the KV cache of {} layers",
                self.layers.len()
            ))
        })
    }

    fn layer_mut(&mut self, layer: usize) -> Result<&mut LayerKv<B>> {
        let n = self.layers.len();
        self.layers.get_mut(layer).ok_or_else(|| {
            Error::InvalidInput(format!(
                "layer {layer} is outside the KV cache of {n} layers"
            ))
        })
    }

    /// Tokens whose keys layer `layer` holds.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `layer` is out of range.
    pub fn key_tokens(&self, layer: usize) -> Result<usize> {
        Ok(self.layer(layer)?.keys.tokens)
    }

    /// Tokens whose values layer `layer` holds.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `layer` is out of range.
    pub fn value_tokens(&self, layer: usize) -> Result<usize> {
        Ok(self.layer(layer)?.values.tokens)
    }

    /// The number of cached tokens, the same in every layer's keys and values.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the layers disagree (a pass was interrupted, or attention of
    /// some layers ran elsewhere).
    pub fn tokens(&self) -> Result<usize> {
        let first = self.layers.first().map_or(0, |l| l.keys.tokens);
        for (i, l) in self.layers.iter().enumerate() {
            if l.keys.tokens != first || l.values.tokens != first {
                return Err(Error::InvalidInput(format!(
                    "KV cache layer {i} holds {} keys and {} values, layer 0 holds {first}: \
                     the cache is not at a pass boundary",
                    l.keys.tokens, l.values.tokens
                )));
            }
        }
        Ok(first)
    }

    /// Appends `new [heads, n, head_dim]` to layer `layer`'s keys and returns all of them.
    pub(super) fn append_keys(
        &mut self,
        backend: &B,
        layer: usize,
        new: B::Tensor,
    ) -> Result<B::Tensor> {
        self.layer_mut(layer)?.keys.append(backend, new)
    }

    /// Appends `new [heads, n, head_dim]` to layer `layer`'s values and returns all of them.
    pub(super) fn append_values(
        &mut self,
        backend: &B,
        layer: usize,
        new: B::Tensor,
    ) -> Result<B::Tensor> {
        self.layer_mut(layer)?.values.append(backend, new)
    }
}

/// `cached ++ new` along the token dimension, and the number of new tokens.
fn append<B: Backend>(
    backend: &B,
    cached: Option<&B::Tensor>,
    new: B::Tensor,
) -> Result<(B::Tensor, usize)> {
    let n = backend.dims(&new).get(1).copied().ok_or_else(|| {
        Error::shape(
            "kv_cache",
            format!(
                "new entries {:?} must be [heads, n, head_dim]",
                backend.dims(&new)
            ),
        )
    })?;
    let all = match cached {
        Some(c) => backend.cat(&[c, &new], 1)?,
        None => new,
    };
    Ok((all, n))
}
