//! The STI executor: runs a sub-model (which shards of which layers, at which fidelity) while
//! its shards stream from the shard file (SPEC §3 (b), (c)).
//!
//! - A loader thread reads the plan's shards that are not preloaded, layer by layer, with real
//!   `pread`s, throttled to a device bandwidth, into a buffer bounded in bytes
//!   ([`ExecConfig::buffer_bytes`]); compute runs each layer as soon as its shards are in, then
//!   frees them, so IO of layer `l + 1` overlaps compute of layer `l`.
//! - A preload buffer ([`Executor::set_preload`]) keeps chosen shards (the first layers' of a
//!   plan) resident between requests, so execution starts without waiting for IO.
//! - Every weight byte alive (resident parameters, preloaded and buffered shard bytes, embedding
//!   rows, the f32 weights of the chunk being computed) is counted by a [`WeightMeter`]; a run
//!   reports its exact peak, and the timing of each layer (ready, start, finish).
//!
//! The same layer code runs from bytes held in memory ([`ShardCache`]) for the importance
//! profiler, so what is profiled is what is streamed.

mod layer;
mod loader;
mod profile;
mod resident;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use collab_core::model::{Hidden, Input};
use collab_core::{Backend, Error, Result};

pub use layer::{LayerRun, LayerTensors, PartSource};
pub use profile::uniform;
pub use resident::Resident;

use super::file::ShardFile;
use super::layout::{AttentionPart, FfnPart};
use super::meter::{Held, WeightMeter};
use super::{Fidelity, ShardGeometry, ShardKey, quant};
use loader::{BufferGate, Loaded, LoaderJob, run_loader};

/// How the executor streams.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecConfig {
    /// The emulated device's IO bandwidth; `None` reads at the speed of the real file.
    pub io_bytes_per_s: Option<f64>,
    /// Capacity of the loader's buffer in bytes; must hold the largest layer's streamed shards.
    pub buffer_bytes: u64,
    /// Shards assembled and computed at once (1 holds the least f32 weight at a time).
    pub chunk: usize,
}

/// When one layer's shards were in and when it ran, in seconds from the run's start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerTiming {
    /// All of the layer's streamed shards had been read (0 if none streamed).
    pub ready_s: f64,
    /// Compute of the layer began.
    pub start_s: f64,
    /// Compute of the layer ended.
    pub finish_s: f64,
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Request latency: start to head output.
    pub latency_s: f64,
    /// The embedding was done.
    pub embed_s: f64,
    /// Per layer.
    pub layers: Vec<LayerTiming>,
    /// Bytes read from the file during the run (shards and embedding rows).
    pub io_bytes: u64,
    /// Peak weight bytes alive during the run (resident and preload included).
    pub peak_weight_bytes: u64,
    /// Total time compute waited for IO.
    pub wait_s: f64,
}

/// A sub-model: per layer, the shards to run and their fidelity.
pub type SubModel = [Vec<(usize, Fidelity)>];

/// Shard bytes held in memory, keyed by shard and fidelity (the profiler's source).
#[derive(Debug, Default)]
pub struct ShardCache {
    blobs: HashMap<(ShardKey, Fidelity), Vec<u8>>,
}

impl ShardCache {
    /// Reads every shard of `file` at each of `fidelities`.
    ///
    /// # Errors
    /// File errors.
    pub fn load(file: &ShardFile, fidelities: &[Fidelity]) -> Result<Self> {
        let mut blobs = HashMap::new();
        for key in file.geometry().keys() {
            for &f in fidelities {
                blobs.insert((key, f), file.read_shard(key, f)?);
            }
        }
        Ok(Self { blobs })
    }

    /// The bytes of `key` at `fidelity`, if loaded.
    pub fn get(&self, key: ShardKey, fidelity: Fidelity) -> Option<&[u8]> {
        self.blobs.get(&(key, fidelity)).map(Vec::as_slice)
    }
}

/// Shard bytes in memory, decoded when the layer asks.
struct BlobParts<'a> {
    blobs: Vec<&'a [u8]>,
    geometry: &'a ShardGeometry,
}

impl PartSource for BlobParts<'_> {
    fn len(&self) -> usize {
        self.blobs.len()
    }

    fn attention(&self, i: usize) -> Result<AttentionPart> {
        quant::decode_attention(self.blobs[i], self.geometry)
    }

    fn ffn(&self, i: usize) -> Result<FfnPart> {
        quant::decode_ffn(self.blobs[i], self.geometry)
    }
}

/// Closes the loader's gate however the compute side ends.
struct CloseOnDrop<'a>(&'a BufferGate);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Runs sub-models of one shard file on one backend.
#[derive(Debug)]
pub struct Executor<B: Backend> {
    backend: B,
    file: Arc<ShardFile>,
    geometry: ShardGeometry,
    resident: Resident<B>,
    meter: Arc<WeightMeter>,
    preload: HashMap<ShardKey, (Fidelity, Vec<u8>, Held)>,
    config: ExecConfig,
}

impl<B: Backend> Executor<B> {
    /// Opens an executor: reads the resident parameters; nothing is preloaded.
    ///
    /// # Errors
    /// File errors; [`Error::Config`] for a chunk of 0 or a non-positive bandwidth.
    pub fn open(backend: B, file: Arc<ShardFile>, config: ExecConfig) -> Result<Self> {
        if config.chunk == 0 {
            return Err(Error::Config(
                "the executor's chunk must be at least 1 shard".into(),
            ));
        }
        if let Some(r) = config.io_bytes_per_s
            && !(r.is_finite() && r > 0.0)
        {
            return Err(Error::Config(format!("IO bandwidth must be > 0, got {r}")));
        }
        let meter = WeightMeter::new();
        let resident = Resident::load(&backend, &file, &meter)?;
        Ok(Self {
            geometry: file.geometry().clone(),
            backend,
            file,
            resident,
            meter,
            preload: HashMap::new(),
            config,
        })
    }

    /// The weight meter (resident and preloaded bytes are held in it between runs).
    pub fn meter(&self) -> &Arc<WeightMeter> {
        &self.meter
    }

    /// The shard file.
    pub fn file(&self) -> &ShardFile {
        &self.file
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The streaming configuration.
    pub fn config(&self) -> ExecConfig {
        self.config
    }

    /// Changes the streaming configuration.
    pub fn set_config(&mut self, config: ExecConfig) {
        self.config = config;
    }

    /// Replaces the preload buffer by `shards` (read from the file now, held until replaced).
    ///
    /// # Errors
    /// File errors; [`Error::InvalidInput`] for a shard outside the model or listed twice.
    pub fn set_preload(&mut self, shards: &[(ShardKey, Fidelity)]) -> Result<()> {
        self.preload.clear();
        for &(key, f) in shards {
            self.check_key(key)?;
            let bytes = self.file.read_shard(key, f)?;
            let held = self.meter.hold(bytes.len() as u64);
            if self.preload.insert(key, (f, bytes, held)).is_some() {
                return Err(Error::InvalidInput(format!(
                    "shard {key:?} preloaded twice"
                )));
            }
        }
        Ok(())
    }

    /// Bytes held by the preload buffer.
    pub fn preload_bytes(&self) -> u64 {
        self.preload.values().map(|(_, b, _)| b.len() as u64).sum()
    }

    fn check_key(&self, key: ShardKey) -> Result<()> {
        if key.layer >= self.geometry.layers || key.shard >= self.geometry.heads {
            return Err(Error::InvalidInput(format!(
                "shard {key:?} outside a model of {} layers x {} shards",
                self.geometry.layers, self.geometry.heads
            )));
        }
        Ok(())
    }

    fn check(&self, sub: &SubModel) -> Result<()> {
        if sub.len() != self.geometry.layers {
            return Err(Error::InvalidInput(format!(
                "a sub-model of {} layers for a model of {}",
                sub.len(),
                self.geometry.layers
            )));
        }
        for (layer, shards) in sub.iter().enumerate() {
            let mut seen = HashSet::new();
            for &(shard, _) in shards {
                self.check_key(ShardKey { layer, shard })?;
                if !seen.insert(shard) {
                    return Err(Error::InvalidInput(format!(
                        "shard {shard} of layer {layer} listed twice"
                    )));
                }
            }
        }
        Ok(())
    }

    fn is_preloaded(&self, key: ShardKey, f: Fidelity) -> bool {
        self.preload.get(&key).is_some_and(|(pf, _, _)| *pf == f)
    }

    fn layer_run(&self) -> LayerRun<'_> {
        LayerRun {
            geometry: &self.geometry,
            chunk: self.config.chunk,
        }
    }

    /// Embeds `input` (text: reading the rows it needs).
    ///
    /// # Errors
    /// As [`Resident::embed`].
    pub fn embed(&self, input: &Input<B>) -> Result<Hidden<B>> {
        self.resident
            .embed(&self.backend, &self.file, input, &self.meter)
    }

    /// The head.
    ///
    /// # Errors
    /// Backend errors.
    pub fn head(&self, hidden: &Hidden<B>) -> Result<B::Tensor> {
        self.resident.head(&self.backend, hidden)
    }

    /// Runs layer `layer` with `shards` whose bytes come from `cache` (no IO, no loader).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a shard outside the model or missing from the cache;
    /// decoding and backend errors.
    pub fn layer_from_cache(
        &self,
        layer: usize,
        shards: &[(usize, Fidelity)],
        cache: &ShardCache,
        hidden: Hidden<B>,
    ) -> Result<Hidden<B>> {
        let tensors = self.resident.layers.get(layer).ok_or_else(|| {
            Error::InvalidInput(format!(
                "no layer {layer} in a model of {}",
                self.geometry.layers
            ))
        })?;
        let blobs = shards
            .iter()
            .map(|&(shard, f)| {
                let key = ShardKey { layer, shard };
                self.check_key(key)?;
                cache.get(key, f).ok_or_else(|| {
                    Error::InvalidInput(format!("shard {key:?} at {f} is not in the cache"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let parts = BlobParts {
            blobs,
            geometry: &self.geometry,
        };
        self.layer_run()
            .forward(&self.backend, tensors, &parts, hidden, &self.meter)
    }

    /// Runs `sub` on `input`, streaming the shards that are not preloaded.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a sub-model that does not fit the model, or a layer whose
    /// streamed shards exceed the buffer; file, decoding and backend errors.
    pub fn run(&self, sub: &SubModel, input: &Input<B>) -> Result<(B::Tensor, RunReport)> {
        self.check(sub)?;
        let mut order = Vec::new();
        for (layer, shards) in sub.iter().enumerate() {
            let mut bytes = 0;
            for &(shard, f) in shards {
                let key = ShardKey { layer, shard };
                if !self.is_preloaded(key, f) {
                    bytes += self.file.shard_len(key, f)?;
                    order.push((key, f));
                }
            }
            if bytes > self.config.buffer_bytes {
                return Err(Error::InvalidInput(format!(
                    "layer {layer} streams {bytes} bytes but the loader's buffer holds {}",
                    self.config.buffer_bytes
                )));
            }
        }
        let gate = BufferGate::new(self.config.buffer_bytes);
        let read_before = self.file.bytes_read();
        self.meter.reset_peak();
        let start = Instant::now();
        let (tx, rx) = mpsc::channel::<Result<Loaded>>();
        let job = LoaderJob {
            file: &self.file,
            order,
            io_bytes_per_s: self.config.io_bytes_per_s,
            gate: &gate,
            meter: &self.meter,
            start,
        };
        let (out, embed_s, layers, wait_s) = std::thread::scope(|s| -> Result<_> {
            s.spawn(move || run_loader(job, tx));
            let _close = CloseOnDrop(&gate);
            let mut hidden = self.embed(input)?;
            let embed_s = start.elapsed().as_secs_f64();
            let mut timings = Vec::with_capacity(sub.len());
            let mut wait_s = 0.0;
            for (layer, shards) in sub.iter().enumerate() {
                let before = start.elapsed().as_secs_f64();
                let mut loaded = HashMap::new();
                let mut ready_s: f64 = 0.0;
                for &(shard, f) in shards {
                    let key = ShardKey { layer, shard };
                    if self.is_preloaded(key, f) {
                        continue;
                    }
                    let got = rx.recv().map_err(|_| {
                        Error::InvalidInput(format!("the loader stopped before shard {key:?}"))
                    })??;
                    if got.key != key {
                        return Err(Error::InvalidInput(format!(
                            "the loader sent {:?} where {key:?} was due",
                            got.key
                        )));
                    }
                    ready_s = ready_s.max(got.at_s);
                    loaded.insert(shard, got);
                }
                let start_s = start.elapsed().as_secs_f64();
                wait_s += start_s - before;
                let blobs = shards
                    .iter()
                    .map(|&(shard, _)| match loaded.get(&shard) {
                        Some(l) => Ok(l.bytes.as_slice()),
                        None => self
                            .preload
                            .get(&ShardKey { layer, shard })
                            .map(|(_, b, _)| b.as_slice())
                            .ok_or_else(|| {
                                Error::InvalidInput(format!(
                                    "shard {shard} of layer {layer} neither loaded nor preloaded"
                                ))
                            }),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let parts = BlobParts {
                    blobs,
                    geometry: &self.geometry,
                };
                hidden = self.layer_run().forward(
                    &self.backend,
                    &self.resident.layers[layer],
                    &parts,
                    hidden,
                    &self.meter,
                )?;
                // The layer is done before its bytes go back to the loader.
                timings.push(LayerTiming {
                    ready_s,
                    start_s,
                    finish_s: start.elapsed().as_secs_f64(),
                });
                let freed: u64 = loaded.values().map(|l| l.bytes.len() as u64).sum();
                drop(loaded);
                gate.release(freed);
            }
            let out = self.head(&hidden)?;
            Ok((out, embed_s, timings, wait_s))
        })?;
        let report = RunReport {
            latency_s: start.elapsed().as_secs_f64(),
            embed_s,
            layers,
            io_bytes: self.file.bytes_read() - read_before,
            peak_weight_bytes: self.meter.peak(),
            wait_s,
        };
        Ok((out, report))
    }
}

#[cfg(test)]
mod tests;
