//! [`Hysteresis`]: a split strategy that keeps its last answer until the conditions move.

use std::sync::Mutex;

use collab_core::Result;
use collab_core::split::{Conditions, SplitChoice, SplitStrategy};

/// Wraps a strategy so that it re-selects only when the conditions move: bandwidth or server
/// queue by more than a relative tolerance (default 0.1), or any change of RTT, deadline or
/// loss limit. Between moves it answers the last choice without asking the inner strategy, so
/// a device does not flap between two splits on measurement noise, and an expensive strategy
/// is asked rarely.
///
/// Errors are not remembered: after one, the next call asks the inner strategy again.
///
/// ```
/// use collab_core::split::{CodecId, Conditions, SplitChoice, SplitStrategy};
/// use collab_policies::split::Hysteresis;
///
/// #[derive(Debug)]
/// struct AlwaysServer;
/// impl SplitStrategy for AlwaysServer {
///     fn name(&self) -> String { "always-server".into() }
///     fn choose(&self, _: &Conditions) -> collab_core::Result<SplitChoice> {
///         Ok(SplitChoice { split: 0, codec: CodecId::raw(), rho: 0.0, bytes: 0,
///                          latency: 0.0, loss: 0.0 })
///     }
/// }
///
/// let s = Hysteresis::new(AlwaysServer);
/// let c = Conditions { bandwidth: 1e6, rtt: 0.01, server_queue: 0.0, deadline: 0.3,
///                      max_loss: 0.01 };
/// assert!(s.observe(&c)?.1, "the first call selects");
/// assert!(!s.observe(&c)?.1, "the same conditions reuse it");
/// # Ok::<(), collab_core::Error>(())
/// ```
#[derive(Debug)]
pub struct Hysteresis<S> {
    inner: S,
    tolerance: f64,
    last: Mutex<Option<(Conditions, SplitChoice)>>,
}

impl<S: SplitStrategy> Hysteresis<S> {
    /// `inner` with the default tolerance of 0.1.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            tolerance: 0.1,
            last: Mutex::new(None),
        }
    }

    /// Sets the relative change of bandwidth or server queue that triggers re-selection
    /// (negative values count as 0: every change re-selects).
    pub fn with_tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = if tolerance.is_nan() {
            0.0
        } else {
            tolerance.max(0.0)
        };
        self
    }

    /// The wrapped strategy.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The choice for `c`, and whether it was recomputed (`false`: the last one was reused).
    ///
    /// # Errors
    /// The inner strategy's.
    pub fn observe(&self, c: &Conditions) -> Result<(SplitChoice, bool)> {
        // Relative change beyond the tolerance, and at least `floor` in absolute terms.
        let moved = |a: f64, b: f64, floor: f64| {
            (a - b).abs() > (self.tolerance * a.abs().max(b.abs())).max(floor)
                || a.is_nan() != b.is_nan()
        };
        {
            let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((prev, choice)) = last.as_ref()
                && !moved(prev.bandwidth, c.bandwidth, 1e-9)
                && !moved(prev.server_queue, c.server_queue, 1e-3)
                && prev.deadline == c.deadline
                && prev.max_loss == c.max_loss
                && prev.rtt == c.rtt
            {
                return Ok((choice.clone(), false));
            }
        }
        let choice = self.inner.choose(c)?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((*c, choice.clone()));
        Ok((choice, true))
    }
}

impl<S: SplitStrategy> SplitStrategy for Hysteresis<S> {
    fn name(&self) -> String {
        format!("hysteresis({}, {})", self.inner.name(), self.tolerance)
    }

    fn choose(&self, c: &Conditions) -> Result<SplitChoice> {
        self.observe(c).map(|(choice, _)| choice)
    }
}
