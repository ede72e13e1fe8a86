//! Poisson arrivals at the rate an operator sets ([`crate::wire::DeviceSettings::rate`]),
//! for devices and load generators that send at a rate: a new setting draws a new gap at once,
//! and a rate of 0 pauses them.

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Exp};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::wire::DeviceSettings;

/// How long a paused [`Arrivals::next`] waits for a new rate before it returns.
const PAUSED_POLL: Duration = Duration::from_millis(500);

/// What [`Arrivals::next`] waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// A request is due now.
    Arrival,
    /// No request: the rate changed or is 0. Check what ends the run, then call again.
    Idle,
}

/// Poisson arrivals at the operator's latest rate, else `default_rate` (requests/s).
#[derive(Debug)]
pub struct Arrivals {
    settings: watch::Receiver<DeviceSettings>,
    default_rate: f64,
    due: Instant,
}

impl Arrivals {
    /// Arrivals from now, following `settings` (from [`super::DeviceClient::settings`]).
    pub fn new(settings: watch::Receiver<DeviceSettings>, default_rate: f64) -> Self {
        Self {
            settings,
            default_rate,
            due: Instant::now(),
        }
    }

    /// Waits for the next arrival, a gap drawn with `rng` after the previous one;
    /// [`Tick::Idle`] early when a new setting comes (the next call draws a gap at its rate
    /// from now) or, paused at rate 0, after at most half a second.
    pub async fn next(&mut self, rng: &mut impl Rng) -> Tick {
        let rate = self
            .settings
            .borrow_and_update()
            .rate
            .map_or(self.default_rate, f64::from);
        let Some(exp) = Exp::new(rate)
            .ok()
            .filter(|_| rate.is_finite() && rate > 0.0)
        else {
            let _ = tokio::time::timeout(PAUSED_POLL, self.settings.changed()).await;
            self.due = Instant::now();
            return Tick::Idle;
        };
        self.due += Duration::from_secs_f64(exp.sample(rng));
        let changed = tokio::select! {
            () = tokio::time::sleep_until(self.due) => false,
            r = self.settings.changed() => r.is_ok(),
        };
        if changed {
            self.due = Instant::now();
            return Tick::Idle;
        }
        Tick::Arrival
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[tokio::test]
    async fn arrivals_follow_the_operators_rate() {
        let (tx, rx) = watch::channel(DeviceSettings::default());
        let mut arrivals = Arrivals::new(rx, 2000.0);
        let mut rng = StdRng::seed_from_u64(1);
        let start = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(arrivals.next(&mut rng).await, Tick::Arrival);
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "about 10 ms at 2000/s"
        );
        // A slow rate set while waiting ends the wait at once.
        let mut waiting = Arrivals::new(tx.subscribe(), 0.001);
        let setter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_modify(|s| s.rate = Some(0.0));
            tx
        });
        let t = std::time::Instant::now();
        assert_eq!(waiting.next(&mut rng).await, Tick::Idle);
        assert!(t.elapsed() < Duration::from_secs(5), "not the 1000 s gap");
        let _tx = setter.await.expect("setter");
        // Paused: idle, never an arrival.
        for _ in 0..2 {
            assert_eq!(waiting.next(&mut rng).await, Tick::Idle);
        }
    }
}
