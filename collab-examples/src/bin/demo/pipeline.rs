//! The demo starts from a pipeline config file (default: the shipped
//! `collab-examples/pipelines/deit-tiny.toml`, embedded): the server and each device process
//! get a copy of it, with the addresses, ids and per-device settings the demo owns written in.
//! Everything else in the file (batch policy, codecs, backends, split strategy, limits) is the
//! file's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use collab_net::pipeline::PipelineConfig;
use toml::{Table, Value};

use super::fleet::Profile;

/// The shipped pipeline the demo runs by default.
pub(crate) const DEFAULT_PIPELINE: &str = include_str!("../../../pipelines/deit-tiny.toml");

/// A pipeline file's text as a table the demo edits.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    table: Table,
    origin: String,
}

/// The deadline of the demo when neither the command line nor the file sets one, ms.
const DEFAULT_DEADLINE_MS: f64 = 400.0;

impl Template {
    /// The file at `path`, or the shipped default.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
                p.display().to_string(),
            ),
            None => (
                DEFAULT_PIPELINE.to_owned(),
                "pipelines/deit-tiny.toml".into(),
            ),
        };
        // Parsed once as a pipeline first: a bad file is reported with its keys and lines.
        PipelineConfig::from_toml(&text).with_context(|| format!("pipeline {origin}"))?;
        let table = text
            .parse::<Table>()
            .with_context(|| format!("pipeline {origin}"))?;
        Ok(Self { table, origin })
    }

    /// Where it came from, for messages.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    fn section(&mut self, name: &str) -> &mut Table {
        let entry = self
            .table
            .entry(name)
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        match entry {
            Value::Table(t) => t,
            _ => unreachable!("made a table above"),
        }
    }

    /// The end-to-end deadline: `flag`, else the file's `[device].deadline_ms`, else 400 ms.
    pub(crate) fn deadline_ms(&self, flag: Option<f64>) -> f64 {
        flag.or_else(|| {
            let device = self.table.get("device")?.as_table()?;
            let v = device.get("deadline_ms")?;
            v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
        })
        .unwrap_or(DEFAULT_DEADLINE_MS)
    }

    /// Writes the server's copy: listening on a free port, metrics on `metrics`, with the
    /// demo's `capacity`, batch `budget` and `bases` where given.
    pub(crate) fn write_server(
        &self,
        path: &Path,
        metrics: SocketAddr,
        dashboard: Option<SocketAddr>,
        capacity: Option<usize>,
        budget: Option<usize>,
        bases: Option<&Path>,
    ) -> Result<()> {
        let mut t = self.clone();
        let server = t.section("server");
        server.insert("listen".into(), Value::String("127.0.0.1:0".into()));
        server.insert("metrics".into(), Value::String(metrics.to_string()));
        if let Some(d) = dashboard {
            server.insert("dashboard".into(), Value::String(d.to_string()));
        }
        if let Some(c) = capacity {
            server.insert("capacity".into(), int(c)?);
        }
        if let Some(path) = bases {
            server.insert("bases".into(), Value::String(path.display().to_string()));
        }
        if let Some(b) = budget {
            let batch = server
                .entry("batch")
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(batch) = batch {
                batch
                    .entry("kind")
                    .or_insert_with(|| Value::String("shared".into()));
                batch.insert("budget".into(), int(b)?);
            }
        }
        t.write(path)
    }

    /// Writes device `i`'s copy.
    pub(crate) fn write_device(&self, path: &Path, device: &DeviceFile<'_>) -> Result<()> {
        let mut t = self.clone();
        let d = t.section("device");
        d.insert("server".into(), Value::String(device.server.to_string()));
        d.insert("id".into(), Value::String(device.id.clone()));
        d.insert("slowdown".into(), Value::Float(device.profile.slowdown));
        d.insert("deadline_ms".into(), Value::Float(device.deadline_ms));
        if let Some(loss) = device.max_loss {
            d.insert("max_loss".into(), Value::Float(loss));
        }
        d.insert(
            "accuracy_table".into(),
            Value::String(device.accuracy_table.display().to_string()),
        );
        if let Some(bases) = device.bases {
            d.insert("bases".into(), Value::String(bases.display().to_string()));
        }
        if device.server_only {
            let mut split = Table::new();
            split.insert("kind".into(), Value::String("fixed".into()));
            split.insert("split".into(), Value::Integer(0));
            d.insert("split".into(), Value::Table(split));
        }
        t.write(path)
    }

    fn write(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(&self.table).context("writing a pipeline copy")?;
        PipelineConfig::from_toml(&text)
            .with_context(|| format!("the demo's copy of {}", self.origin))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// What the demo writes into a device's copy.
#[derive(Debug)]
pub(crate) struct DeviceFile<'a> {
    pub(crate) server: SocketAddr,
    pub(crate) id: String,
    pub(crate) profile: &'a Profile,
    pub(crate) deadline_ms: f64,
    pub(crate) max_loss: Option<f64>,
    pub(crate) accuracy_table: PathBuf,
    pub(crate) bases: Option<&'a Path>,
    /// Every request at split 0 (the comparison run): the file's split strategy is replaced
    /// by `{ kind = "fixed", split = 0 }`.
    pub(crate) server_only: bool,
}

fn int(v: usize) -> Result<Value> {
    Ok(Value::Integer(i64::try_from(v).context("value too large")?))
}
