//! The two-level model description used by operator placement (SPEC §7).
//!
//! A [`LayerGraph`] holds the structure of a LLaMA-style decoder (embedding, decoder layers,
//! head) and its dependencies; [`LayerGraph::lower`] turns it into the [`OpGraph`] of one
//! stage (prefill of `s` tokens, or one decode step after `s` cached tokens), where every
//! [`Operator`] carries its MACs, FLOPs, bytes read and written, the value it produces and
//! where its inputs come from (another operator, the request, or the KV cache that lives with
//! attention). Placement policies (`collab-policies::operator`) assign each operator a side and
//! insert the transfers; the executor runs the same operators on real backends.

mod config;
mod layer;
mod op;
#[cfg(test)]
mod tests;

pub use config::{DECODER_PRESETS, DecoderConfig};
pub use layer::{Layer, LayerGraph, LayerKind};
pub use op::{
    NormSite, OpClass, OpGraph, OpId, OpKind, Operator, Projection, Stage, Value, ValueId,
    ValueSource,
};
