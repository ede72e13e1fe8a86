//! Learned prompt tokens (gamma > 0, OTAS, SPEC §4) and the token adapter that inserts them.
//!
//! A task's [`PromptSet`] holds one `[gamma, d]` tensor per layer (VPT-deep: deep prompts, a
//! fresh set at every block). [`PromptAdapter`] inserts them at the start of each block, before
//! the attention norm (`TokenAdapter::before_attention`), right after the `protected` leading
//! tokens (the class token stays first). Prompts accumulate: the tokens inserted at block `l`
//! stay in the sequence for the blocks after it, so block `l` sees `(l + 1) * gamma` prompt
//! tokens. Prompts are ordinary tokens: size 1, and mask 1 where the hidden states carry a mask.

use collab_core::model::Hidden;
use collab_core::token::TokenAdapter;
use collab_core::{Backend, Error, Result};

/// Learned prompts of one task at one prompt count: one `[gamma, d]` tensor per layer (all
/// layers the same gamma).
#[derive(Clone, Debug)]
pub struct PromptSet<B: Backend> {
    per_layer: Vec<B::Tensor>,
    gamma: usize,
    hidden: usize,
}

impl<B: Backend> PromptSet<B> {
    /// A prompt set from one `[gamma, d]` tensor per layer, layer 0 first.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no layers or `gamma = 0` (a prompt count of 0 is no
    /// prompt set); [`Error::Shape`] if a tensor is not 2-D or the layers' shapes differ.
    pub fn new(backend: &B, per_layer: Vec<B::Tensor>) -> Result<Self> {
        let first = per_layer
            .first()
            .ok_or_else(|| Error::InvalidInput("a prompt set needs at least one layer".into()))?;
        let (gamma, hidden) = match backend.dims(first)[..] {
            [g, d] => (g, d),
            ref other => {
                return Err(Error::shape(
                    "prompt_set",
                    format!("layer 0 prompts must be [gamma, hidden], got {other:?}"),
                ));
            }
        };
        if gamma == 0 || hidden == 0 {
            return Err(Error::InvalidInput(format!(
                "prompt set of shape [{gamma}, {hidden}]: gamma and hidden must be positive \
                 (a task without prompts has no prompt set)"
            )));
        }
        for (l, t) in per_layer.iter().enumerate() {
            let dims = backend.dims(t);
            if dims != [gamma, hidden] {
                return Err(Error::shape(
                    "prompt_set",
                    format!("layer {l} prompts are {dims:?}, layer 0's are [{gamma}, {hidden}]"),
                ));
            }
        }
        Ok(Self {
            per_layer,
            gamma,
            hidden,
        })
    }

    /// Prompt tokens added per layer.
    pub fn gamma(&self) -> usize {
        self.gamma
    }

    /// Number of layers that get prompts (layers `0..layers`).
    pub fn layers(&self) -> usize {
        self.per_layer.len()
    }

    /// Hidden size `d`.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The `[gamma, d]` prompts of each layer.
    pub fn per_layer(&self) -> &[B::Tensor] {
        &self.per_layer
    }
}

/// The prompt adapter for one batch: row `i` of the batch gets `sets[i]`'s prompts.
///
/// All sets share gamma, layer count and hidden size (a batch runs at one gamma, SPEC §4).
/// `gamma(l)` is the sets' gamma for `l < layers` and 0 after.
#[derive(Clone, Debug)]
pub struct PromptAdapter<B: Backend> {
    /// Per layer, the batch's prompts `[batch, gamma, d]`.
    per_layer: Vec<B::Tensor>,
    batch: usize,
    gamma: usize,
    hidden: usize,
}

impl<B: Backend> PromptAdapter<B> {
    /// An adapter for a batch whose row `i` belongs to the task of `sets[i]`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no rows, or sets that differ in gamma, layer count or hidden
    /// size; backend errors.
    pub fn for_rows(backend: &B, sets: &[&PromptSet<B>]) -> Result<Self> {
        let first = sets
            .first()
            .ok_or_else(|| Error::InvalidInput("a prompt adapter needs at least one row".into()))?;
        for (i, s) in sets.iter().enumerate() {
            if (s.gamma, s.layers(), s.hidden) != (first.gamma, first.layers(), first.hidden) {
                return Err(Error::InvalidInput(format!(
                    "a batch runs at one gamma: row {i} has {} prompts x {} layers x {} dims, \
                     row 0 has {} x {} x {}",
                    s.gamma,
                    s.layers(),
                    s.hidden,
                    first.gamma,
                    first.layers(),
                    first.hidden
                )));
            }
        }
        let (g, d) = (first.gamma, first.hidden);
        let per_layer = (0..first.layers())
            .map(|l| {
                let rows = sets
                    .iter()
                    .map(|s| backend.reshape(&s.per_layer[l], &[1, g, d]))
                    .collect::<Result<Vec<_>>>()?;
                let refs: Vec<&B::Tensor> = rows.iter().collect();
                backend.cat(&refs, 0)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            per_layer,
            batch: sets.len(),
            gamma: g,
            hidden: d,
        })
    }

    /// An adapter giving every one of `batch` rows the prompts of `set`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `batch = 0`; backend errors.
    pub fn uniform(backend: &B, set: &PromptSet<B>, batch: usize) -> Result<Self> {
        Self::for_rows(backend, &vec![set; batch])
    }

    /// Number of rows the adapter was built for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Ones `[batch, gamma]` joined into a mask or sizes tensor `[batch, tokens]` after column
    /// `at`.
    fn extend_ones(&self, backend: &B, t: &B::Tensor, at: usize) -> Result<B::Tensor> {
        let dims = backend.dims(t);
        let n = dims.get(1).copied().unwrap_or(0);
        if dims.len() != 2 || dims[0] != self.batch || at > n {
            return Err(Error::shape(
                "prompt_adapter",
                format!(
                    "mask/sizes {dims:?} do not fit a batch of {} with {at} protected tokens",
                    self.batch
                ),
            ));
        }
        let ones = backend.from_vec(
            vec![1.0; self.batch * self.gamma],
            &[self.batch, self.gamma],
        )?;
        insert(backend, t, &ones, 1, at, n)
    }
}

/// `t` with `new` inserted along `dim` before position `at` (`n` = `t`'s size along `dim`).
fn insert<B: Backend>(
    backend: &B,
    t: &B::Tensor,
    new: &B::Tensor,
    dim: usize,
    at: usize,
    n: usize,
) -> Result<B::Tensor> {
    let head = backend.narrow(t, dim, 0, at)?;
    let tail = backend.narrow(t, dim, at, n - at)?;
    let parts: Vec<&B::Tensor> = [(&head, at), (new, 1), (&tail, n - at)]
        .into_iter()
        .filter(|&(_, len)| len > 0)
        .map(|(p, _)| p)
        .collect();
    backend.cat(&parts, dim)
}

impl<B: Backend> TokenAdapter<B> for PromptAdapter<B> {
    fn name(&self) -> String {
        format!("prompts(+{}x{})", self.gamma, self.per_layer.len())
    }

    fn gamma(&self, layer: usize) -> i32 {
        if layer < self.per_layer.len() {
            i32::try_from(self.gamma).unwrap_or(i32::MAX)
        } else {
            0
        }
    }

    /// Inserts block `layer`'s prompts right after the `protected` leading tokens, extending
    /// `mask` and `sizes` with ones.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the hidden states' batch size differs from the adapter's;
    /// [`Error::Shape`] for another hidden size or `protected` beyond the token count.
    fn before_attention(&self, backend: &B, layer: usize, hidden: Hidden<B>) -> Result<Hidden<B>> {
        let Some(prompts) = self.per_layer.get(layer) else {
            return Ok(hidden);
        };
        let (b, n, d) = hidden.dims3(backend)?;
        if b != self.batch {
            return Err(Error::InvalidInput(format!(
                "prompt adapter built for a batch of {} got hidden states of batch {b}",
                self.batch
            )));
        }
        if d != self.hidden {
            return Err(Error::shape(
                "prompt_adapter",
                format!("prompts have {} dims, hidden states {d}", self.hidden),
            ));
        }
        let at = hidden.protected;
        if at > n {
            return Err(Error::shape(
                "prompt_adapter",
                format!("{at} protected tokens but only {n} tokens"),
            ));
        }
        let x = insert(backend, &hidden.x, prompts, 1, at, n)?;
        let mask = match &hidden.mask {
            Some(m) => Some(self.extend_ones(backend, m, at)?),
            None => None,
        };
        let sizes = match &hidden.sizes {
            Some(s) => Some(self.extend_ones(backend, s, at)?),
            None => None,
        };
        Ok(Hidden {
            x,
            mask,
            sizes,
            protected: at,
        })
    }
}
