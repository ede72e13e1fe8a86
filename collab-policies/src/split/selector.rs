//! The split-selection rule of SPEC §1.
//!
//! Candidates: server-only (k = 0, the raw input crosses), every measured (k, codec, rank) of
//! the [`AccuracyTable`] plus the uncompressed `f32` activation at every k, and device-only
//! (k = L). The predicted latency of a candidate is
//!
//! ```text
//! device embed + blocks 0..k + encode          (device CostModel, batch 1; encode scaled)
//! + bytes / bandwidth + rtt                    (uplink, one round trip)
//! + server queue + decode + blocks k..L + head (server CostModel, batch 1)
//! + response bytes / bandwidth                 (the result coming back)
//! ```
//!
//! and device-only is the device's whole model with no network. Among candidates with
//! `latency <= deadline` and `loss <= max_loss`, the rule keeps the most blocks on the device
//! (to relieve the server) and breaks ties by lower latency.
//!
//! The selector answers from scratch on every call; wrap it in [`super::Hysteresis`] to keep
//! a choice until the conditions move, and in [`super::Fallback`] with
//! [`super::FastestWithinLoss`] to answer something when no candidate meets the deadline.

use std::sync::Arc;

use collab_core::cost::{CostModel, Workload};
use collab_core::split::{CodecId, Conditions, SplitChoice, SplitStrategy};
use collab_core::{Error, Result};

use super::table::AccuracyTable;

/// Fixed facts about the model and the deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectorConfig {
    /// Blocks of the model (L).
    pub layers: usize,
    /// Tokens per request entering blocks.
    pub tokens: usize,
    /// Hidden features.
    pub features: usize,
    /// Bytes of the raw input a server-only request sends (e.g. a 224 x 224 RGB image).
    pub raw_input_bytes: usize,
    /// Bytes of the response (e.g. the logits).
    pub response_bytes: usize,
    /// Factor from the codec times in the table (measured on the machine that ran the sweep)
    /// to the device's encode time.
    pub device_codec_scale: f64,
    /// Whether device-only (k = L) is a candidate. Experiments that measure what the server
    /// sustains turn it off (a device that can run everything alone sends nothing).
    pub allow_device_only: bool,
}

/// One candidate and its predicted latency parts.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The choice, with its total predicted latency.
    pub choice: SplitChoice,
    /// Device compute (embedding, blocks, encode) seconds.
    pub device: f64,
    /// Network seconds (uplink, RTT, response).
    pub network: f64,
    /// Server seconds (queue, decode, blocks, head).
    pub server: f64,
}

/// Picks (k, codec) by the SPEC §1 rule.
#[derive(Debug)]
pub struct SplitSelector {
    device: Arc<dyn CostModel>,
    server: Arc<dyn CostModel>,
    table: AccuracyTable,
    /// The table's codec ids, parsed once.
    ids: Vec<CodecId>,
    config: SelectorConfig,
}

impl SplitSelector {
    /// A selector over the given profiles and accuracy table.
    ///
    /// # Errors
    /// [`Error::Config`] if the table was measured on a model with another block count or
    /// feature size, or names a codec family that is not a valid [`CodecId`] family.
    pub fn new(
        device: Arc<dyn CostModel>,
        server: Arc<dyn CostModel>,
        table: AccuracyTable,
        config: SelectorConfig,
    ) -> Result<Self> {
        if table.layers != config.layers || table.features != config.features {
            return Err(Error::Config(format!(
                "accuracy table of `{}` ({} blocks, {} features) does not describe this model \
                 ({} blocks, {} features)",
                table.model, table.layers, table.features, config.layers, config.features
            )));
        }
        let ids = table
            .entries
            .iter()
            .map(|e| {
                let rank = u32::try_from(e.rank).map_err(|_| {
                    Error::Config(format!("accuracy table: rank {} of `{}`", e.rank, e.codec))
                })?;
                CodecId::new(e.codec.clone(), Some(rank))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            device,
            server,
            table,
            ids,
            config,
        })
    }

    /// The fixed facts it was built with.
    pub fn config(&self) -> &SelectorConfig {
        &self.config
    }

    fn device_part(&self, k: usize) -> Result<f64> {
        if k == 0 {
            return Ok(0.0);
        }
        let t = self.config.tokens;
        let mut s = self.device.seconds(&Workload::Embed {
            batch: 1,
            tokens: t,
        })?;
        s += self.device.blocks_seconds(0..k, 1, t)?;
        if k == self.config.layers {
            s += self.device.seconds(&Workload::Head {
                batch: 1,
                tokens: t,
            })?;
        }
        Ok(s)
    }

    fn server_part(&self, k: usize, queue: f64) -> Result<f64> {
        let (t, l) = (self.config.tokens, self.config.layers);
        let mut s = queue + self.server.blocks_seconds(k..l, 1, t)?;
        s += self.server.seconds(&Workload::Head {
            batch: 1,
            tokens: t,
        })?;
        if k == 0 {
            s += self.server.seconds(&Workload::Embed {
                batch: 1,
                tokens: t,
            })?;
        }
        Ok(s)
    }

    /// Every candidate with its predicted latency, unfiltered.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for non-positive bandwidth or negative times; cost-model errors.
    pub fn candidates(&self, c: &Conditions) -> Result<Vec<Candidate>> {
        let valid =
            c.bandwidth > 0.0 && c.rtt >= 0.0 && c.server_queue >= 0.0 && !c.deadline.is_nan();
        if !valid {
            return Err(Error::InvalidInput(format!(
                "conditions need bandwidth > 0 and non-negative rtt and queue, got {c:?}"
            )));
        }
        let (l, n, d) = (self.config.layers, self.config.tokens, self.config.features);
        let network = |bytes: f64| {
            bytes / c.bandwidth + c.rtt + self.config.response_bytes as f64 / c.bandwidth
        };
        let mut out = vec![];
        let mut push =
            |k: usize, codec: CodecId, bytes: f64, loss: f64, enc: f64, dec: f64| -> Result<()> {
                let device = self.device_part(k)? + enc * self.config.device_codec_scale;
                let net = network(bytes);
                let server = self.server_part(k, c.server_queue)? + dec;
                out.push(Candidate {
                    choice: SplitChoice {
                        split: k,
                        codec,
                        rho: 1.0 - bytes / (4.0 * (n * d) as f64),
                        bytes: bytes.round() as usize,
                        latency: device + net + server,
                        loss,
                    },
                    device,
                    network: net,
                    server,
                });
                Ok(())
            };
        push(
            0,
            CodecId::raw(),
            self.config.raw_input_bytes as f64,
            0.0,
            0.0,
            0.0,
        )?;
        let f32_id = CodecId::plain("f32")?;
        for k in 1..l {
            push(k, f32_id.clone(), (4 * n * d) as f64, 0.0, 0.0, 0.0)?;
            let entries = self.table.entries.iter().zip(&self.ids);
            for (e, id) in entries.filter(|(e, _)| e.split == k) {
                push(k, id.clone(), e.bytes, e.loss, e.encode_s, e.decode_s)?;
            }
        }
        if !self.config.allow_device_only {
            return Ok(out);
        }
        let device_only = self.device_part(l)?;
        out.push(Candidate {
            choice: SplitChoice {
                split: l,
                codec: CodecId::none(),
                rho: 1.0,
                bytes: 0,
                latency: device_only,
                loss: 0.0,
            },
            device: device_only,
            network: 0.0,
            server: 0.0,
        });
        Ok(out)
    }

    /// The chosen candidate with its latency parts (what [`SplitStrategy::choose`] returns,
    /// plus the device, network and server seconds it was predicted from).
    ///
    /// # Errors
    /// As [`SplitStrategy::choose`].
    pub fn choose_candidate(&self, c: &Conditions) -> Result<Candidate> {
        self.candidates(c)?
            .into_iter()
            .filter(|x| x.choice.latency <= c.deadline && x.choice.loss <= c.max_loss)
            .max_by(|a, b| {
                a.choice
                    .split
                    .cmp(&b.choice.split)
                    .then(b.choice.latency.total_cmp(&a.choice.latency))
            })
            .ok_or_else(|| Error::NoPrediction {
                model: self.name(),
                workload: format!("deadline {:.4}s, loss limit {}", c.deadline, c.max_loss),
                reason: "no split point meets both the deadline and the accuracy limit".into(),
            })
    }
}

impl SplitStrategy for SplitSelector {
    fn name(&self) -> String {
        format!(
            "split-selector({}, device {})",
            self.table.model,
            self.device.name()
        )
    }

    fn choose(&self, c: &Conditions) -> Result<SplitChoice> {
        self.choose_candidate(c).map(|x| x.choice)
    }
}
