//! The family-to-factory map both sides of a split build their codecs through.

use std::collections::BTreeMap;
use std::sync::Arc;

use collab_core::split::{ActivationCodec, CodecId};
use collab_core::{Error, Result};

use super::{BuiltinCodecs, CodecContext, CodecFactory};

/// Which factory builds each codec family.
///
/// Invariant: a family has one factory; [`CodecRegistry::register`] refuses a second.
#[derive(Clone, Debug, Default)]
pub struct CodecRegistry {
    by_family: BTreeMap<String, Arc<dyn CodecFactory>>,
}

impl CodecRegistry {
    /// A registry that knows no codec.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry of [`BuiltinCodecs`]: every family of [`crate::svd`].
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        for family in BuiltinCodecs.families() {
            registry.by_family.insert(family, Arc::new(BuiltinCodecs));
        }
        registry
    }

    /// Adds `factory` for each family it builds.
    ///
    /// # Errors
    /// [`Error::Config`] if one of its families is already registered (nothing is added then)
    /// or it names no family.
    pub fn register(&mut self, factory: Arc<dyn CodecFactory>) -> Result<()> {
        let families = factory.families();
        if families.is_empty() {
            return Err(Error::Config(format!(
                "codec factory {factory:?} builds no family"
            )));
        }
        for family in &families {
            CodecId::plain(family.clone())?;
            if self.by_family.contains_key(family) {
                return Err(Error::Config(format!(
                    "codec family `{family}` is registered twice (by {factory:?})"
                )));
            }
        }
        for family in families {
            self.by_family.insert(family, factory.clone());
        }
        Ok(())
    }

    /// The registry with `factory` added (see [`CodecRegistry::register`]).
    ///
    /// # Errors
    /// As [`CodecRegistry::register`].
    pub fn with(mut self, factory: impl CodecFactory + 'static) -> Result<Self> {
        self.register(Arc::new(factory))?;
        Ok(self)
    }

    /// Whether `family` has a factory.
    pub fn contains(&self, family: &str) -> bool {
        self.by_family.contains_key(family)
    }

    /// The registered families, in name order.
    pub fn families(&self) -> impl Iterator<Item = &str> {
        self.by_family.keys().map(String::as_str)
    }

    /// The codec `id` names at `context`.
    ///
    /// # Errors
    /// [`Error::Config`] naming `id` if its family is not registered (with the families that
    /// are), or the factory's error.
    pub fn build(
        &self,
        id: &CodecId,
        context: &CodecContext<'_>,
    ) -> Result<Box<dyn ActivationCodec>> {
        let Some(factory) = self.by_family.get(id.family()) else {
            return Err(Error::Config(format!(
                "unknown codec `{id}`: no factory builds family `{}` here (known: {})",
                id.family(),
                self.families().collect::<Vec<_>>().join(", ")
            )));
        };
        factory.build(id, context)
    }
}
