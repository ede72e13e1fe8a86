//! Choosing a backend at run time, per side of a split.
//!
//! [`AnyBackend`] holds one backend of whichever kind a name picks. Its variants exist only
//! when their Cargo feature is compiled in, so code that names a missing backend
//! (`AnyBackend::Tch(..)` without the `tch` feature) fails to compile; a configuration that
//! names one (`"tch-cuda"` in a build without `tch`) fails to parse with an
//! [`Error::Config`] that says which feature to build with.
//!
//! | name | backend | feature |
//! | --- | --- | --- |
//! | `reference` | [`ReferenceBackend`] (f64, slow; the oracle) | always |
//! | `candle-cpu` | [`CandleBackend::cpu`](crate::candle::CandleBackend::cpu) | `candle` (default) |
//! | `candle-cuda`, `candle-cuda:N` | candle on CUDA device N (0 if omitted) | `cuda` |
//! | `arm-f32`, `arm-q8`, `arm-q4` | the device backend with f32, 8-bit or 4-bit linear weights | `arm` |
//! | `tch-cpu` | libtorch on CPU | `tch` |
//! | `tch-cuda`, `tch-cuda:N` | libtorch on CUDA device N | `tch` |
//!
//! Generic code runs on an `AnyBackend` through [`AnyBackend::run`] with a [`BackendTask`]: the
//! task's generic method is monomorphised once per compiled-in backend, so nothing is boxed and
//! every backend runs its own kernels.
//!
//! [`SplitBackends`] is the configuration of a split, one backend per side, as JSON:
//! `{ "device": "arm-q8", "cloud": "tch-cuda" }`.

mod model;
mod name;
#[cfg(test)]
mod tests;

use collab_core::{Backend, Error, Result};

pub use model::{AnyTransformer, HostInput};
use name::parse_name;
pub use name::{BackendName, SplitBackends};

use crate::reference::ReferenceBackend;

/// A backend chosen at run time. See the [module documentation](self) for the names.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyBackend {
    /// The f64 reference backend.
    Reference(ReferenceBackend),
    /// candle, on CPU (or on CUDA with the `cuda` feature).
    #[cfg(feature = "candle")]
    Candle(crate::candle::CandleBackend),
    /// The device backend: candle CPU with quantised linear weights.
    #[cfg(feature = "arm")]
    Arm(crate::candle::quantized::QuantizedCandleBackend),
    /// libtorch.
    #[cfg(feature = "tch")]
    Tch(crate::tch::TchBackend),
}

/// Generic work to run on whichever backend an [`AnyBackend`] holds.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on `backend`.
    fn run<B: Backend>(self, backend: &B) -> Self::Output;
}

/// Every name [`AnyBackend::from_name`] may accept, whether or not its feature is compiled in.
pub const BACKEND_NAMES: &[&str] = &[
    "reference",
    "candle-cpu",
    "candle-cuda",
    "arm-f32",
    "arm-q8",
    "arm-q4",
    "tch-cpu",
    "tch-cuda",
];

impl AnyBackend {
    /// The backend a name picks (see the [module documentation](self)).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown name, a name whose feature is not compiled in, or a
    /// CUDA device that cannot be opened.
    pub fn from_name(name: &str) -> Result<Self> {
        let checked: BackendName = name.parse()?;
        let (kind, ordinal) = parse_name(checked.as_str())?;
        let _ordinal = ordinal.unwrap_or(0);
        match kind {
            "reference" => Ok(Self::Reference(ReferenceBackend::new())),
            #[cfg(feature = "candle")]
            "candle-cpu" => Ok(Self::Candle(crate::candle::CandleBackend::cpu())),
            #[cfg(feature = "cuda")]
            "candle-cuda" => {
                let device = candle_core::Device::new_cuda(_ordinal).map_err(|e| {
                    Error::Config(format!("backend {name:?}: cannot open CUDA device: {e}"))
                })?;
                Ok(Self::Candle(crate::candle::CandleBackend::on(device)))
            }
            #[cfg(feature = "arm")]
            "arm-f32" | "arm-q8" | "arm-q4" => {
                use crate::candle::quantized::{QuantizedCandleBackend, WeightBits};
                let bits = match kind {
                    "arm-q8" => WeightBits::Q8,
                    "arm-q4" => WeightBits::Q4,
                    _ => WeightBits::F32,
                };
                Ok(Self::Arm(QuantizedCandleBackend::new(bits)))
            }
            #[cfg(feature = "tch")]
            "tch-cpu" => Ok(Self::Tch(crate::tch::TchBackend::cpu())),
            #[cfg(feature = "tch")]
            "tch-cuda" => crate::tch::TchBackend::cuda(_ordinal)
                .map(Self::Tch)
                .map_err(|e| Error::Config(format!("backend {name:?}: {e}"))),
            // `parse` above refused every name whose feature is missing.
            _ => Err(Error::Config(format!(
                "backend {name:?} is not compiled into this build"
            ))),
        }
    }

    /// The backend's own name (as [`Backend::name`] gives it, e.g. `candle-cpu`, `arm-q8`).
    pub fn name(&self) -> String {
        self.run(Name)
    }

    /// Runs `task` on the backend this value holds.
    pub fn run<T: BackendTask>(&self, task: T) -> T::Output {
        match self {
            Self::Reference(b) => task.run(b),
            #[cfg(feature = "candle")]
            Self::Candle(b) => task.run(b),
            #[cfg(feature = "arm")]
            Self::Arm(b) => task.run(b),
            #[cfg(feature = "tch")]
            Self::Tch(b) => task.run(b),
        }
    }
}

/// The task behind [`AnyBackend::name`].
struct Name;

impl BackendTask for Name {
    type Output = String;
    fn run<B: Backend>(self, backend: &B) -> String {
        backend.name()
    }
}
