//! A Transformer on a backend chosen at run time, with host-memory inputs and outputs, so
//! that the two sides of a split can run on different backends.

use std::ops::Range;
use std::path::Path;

use collab_core::model::weights::WeightSource;
use collab_core::model::{HostHidden, Input, ModelConfig, Transformer};
use collab_core::{Backend, Error, Result};

use super::AnyBackend;
use crate::reference::ReferenceBackend;

/// A model's input in host memory.
#[derive(Clone, Debug, PartialEq)]
pub enum HostInput {
    /// Preprocessed images, row-major `[batch, channels, height, width]`.
    Images {
        /// The pixel values.
        data: Vec<f32>,
        /// `[batch, channels, height, width]`.
        dims: [usize; 4],
    },
    /// Token ids per sequence.
    Tokens(Vec<Vec<u32>>),
}

impl HostInput {
    fn to_backend<B: Backend>(&self, backend: &B) -> Result<Input<B>> {
        match self {
            Self::Images { data, dims } => Ok(Input::Images(backend.from_vec(data.clone(), dims)?)),
            Self::Tokens(t) => Ok(Input::Tokens(t.clone())),
        }
    }
}

/// A [`Transformer`] on whichever backend an [`AnyBackend`] holds.
///
/// Every method takes and returns host memory ([`HostInput`], [`HostHidden`], `f32` values),
/// so one side of a split can run on one backend and the other side on another:
/// `cloud.finish(&device.start(&input, 0..k)?, k..)`. Each side loads the same weights on its
/// own backend (a quantising backend packs them as it loads).
#[derive(Clone, Debug)]
#[non_exhaustive]
// One value per side of a split, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum AnyTransformer {
    /// On the f64 reference backend.
    Reference(Transformer<ReferenceBackend>),
    /// On candle.
    #[cfg(feature = "candle")]
    Candle(Transformer<crate::candle::CandleBackend>),
    /// On the quantised device backend.
    #[cfg(feature = "arm")]
    Arm(Transformer<crate::candle::quantized::QuantizedCandleBackend>),
    /// On libtorch.
    #[cfg(feature = "tch")]
    Tch(Transformer<crate::tch::TchBackend>),
}

/// Runs `$body` with `$m` bound to the model inside whichever variant `$self` is.
macro_rules! with_model {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            AnyTransformer::Reference($m) => $body,
            #[cfg(feature = "candle")]
            AnyTransformer::Candle($m) => $body,
            #[cfg(feature = "arm")]
            AnyTransformer::Arm($m) => $body,
            #[cfg(feature = "tch")]
            AnyTransformer::Tch($m) => $body,
        }
    };
}

/// The [`AnyTransformer`] variant for `$backend`'s variant, holding `$make` (a model built on
/// the backend bound to `$b`).
macro_rules! build {
    ($backend:expr, $b:ident => $make:expr) => {
        match $backend {
            AnyBackend::Reference($b) => AnyTransformer::Reference($make),
            #[cfg(feature = "candle")]
            AnyBackend::Candle($b) => AnyTransformer::Candle($make),
            #[cfg(feature = "arm")]
            AnyBackend::Arm($b) => AnyTransformer::Arm($make),
            #[cfg(feature = "tch")]
            AnyBackend::Tch($b) => AnyTransformer::Tch($make),
        }
    };
}

/// An error naming `range` unless it lies within a model of `blocks` blocks.
fn check_range(range: &Range<usize>, blocks: usize) -> Result<()> {
    if range.start > range.end || range.end > blocks {
        return Err(Error::InvalidInput(format!(
            "block range {range:?} is outside the model's {blocks} blocks"
        )));
    }
    Ok(())
}

impl AnyTransformer {
    /// Builds `config` with the weights of `src` on `backend`.
    ///
    /// # Errors
    /// As [`Transformer::new`]: invalid configuration, missing or misshapen weights, backend
    /// errors.
    pub fn new(backend: &AnyBackend, config: ModelConfig, src: &dyn WeightSource) -> Result<Self> {
        Ok(build!(backend, b => Transformer::new(b.clone(), config, src)?))
    }

    /// Loads a safetensors checkpoint on `backend`, as [`Transformer::from_safetensors`].
    ///
    /// # Errors
    /// As [`Transformer::from_safetensors`].
    pub fn from_safetensors(
        backend: &AnyBackend,
        config: ModelConfig,
        path: &Path,
    ) -> Result<Self> {
        Ok(build!(backend, b => Transformer::from_safetensors(b.clone(), config, path)?))
    }

    /// The backend's name.
    pub fn backend_name(&self) -> String {
        with_model!(self, m => m.backend().name())
    }

    /// The number of blocks.
    pub fn num_blocks(&self) -> usize {
        with_model!(self, m => m.num_blocks())
    }

    /// The device side of a split: embeds `input` and runs `blocks` (usually `0..k`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a block range outside the model; model and backend errors.
    pub fn start(&self, input: &HostInput, blocks: Range<usize>) -> Result<HostHidden> {
        with_model!(self, m => {
            check_range(&blocks, m.num_blocks())?;
            let be = m.backend();
            let h = m.embed(&input.to_backend(be)?)?;
            m.run_blocks(h, blocks)?.to_host(be)
        })
    }

    /// Runs `blocks` on `hidden` (a stretch of the model between two handoffs).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a block range outside the model; [`Error::Shape`] for hidden
    /// states of the wrong width; backend errors.
    pub fn run_blocks(&self, hidden: &HostHidden, blocks: Range<usize>) -> Result<HostHidden> {
        with_model!(self, m => {
            check_range(&blocks, m.num_blocks())?;
            let be = m.backend();
            m.run_blocks(hidden.to_backend(be)?, blocks)?.to_host(be)
        })
    }

    /// The cloud side of a split: runs `blocks` (usually `k..num_blocks`) on `hidden`, then
    /// the head. Returns the head's output (logits or pooled embeddings), row-major
    /// `[batch, outputs]`, with its dimensions.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a block range outside the model; [`Error::Shape`] for hidden
    /// states of the wrong width; backend errors.
    pub fn finish(
        &self,
        hidden: &HostHidden,
        blocks: Range<usize>,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        with_model!(self, m => {
            check_range(&blocks, m.num_blocks())?;
            let be = m.backend();
            let h = m.run_blocks(hidden.to_backend(be)?, blocks)?;
            let out = m.head(&h)?;
            Ok((be.to_vec(&out)?, be.dims(&out)))
        })
    }

    /// The whole model on one backend.
    ///
    /// # Errors
    /// Model and backend errors.
    pub fn forward(&self, input: &HostInput) -> Result<(Vec<f32>, Vec<usize>)> {
        with_model!(self, m => {
            let be = m.backend();
            let out = m.forward(&input.to_backend(be)?)?;
            Ok((be.to_vec(&out)?, be.dims(&out)))
        })
    }
}
