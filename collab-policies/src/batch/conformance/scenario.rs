//! Seeded random traffic for the suite: the simulated cost of a step and the requests sent.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Simulated seconds of one position (block or head) at batch size 1 ...
pub const BLOCK_FIXED: f64 = 1e-3;
/// ... plus this much per request in the batch.
pub const BLOCK_PER_ITEM: f64 = 2e-4;

/// Simulated seconds of one position (block or head) on a batch of `batch`.
pub fn block_time(batch: usize) -> f64 {
    BLOCK_FIXED + BLOCK_PER_ITEM * batch as f64
}

/// The simulated `remaining(p, b)` of a model of `layers` blocks: `(L + 1 - p)` positions
/// (the blocks left and the head) at [`block_time`]`(b)` each.
pub fn remaining(layers: usize) -> impl Fn(usize, usize) -> f64 + Send + Copy + 'static {
    move |p, b| (layers + 1).saturating_sub(p) as f64 * block_time(b)
}

/// The kind of traffic a round sends; each is one `#[test]` of
/// [`batch_policy_conformance!`](crate::batch_policy_conformance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Load {
    /// Well below capacity, generous deadlines, a few bad and impossible requests.
    Light,
    /// Several times the capacity: full batches, many deadline misses.
    Heavy,
    /// Around capacity, with executor calls failing at random.
    Failing,
    /// Many invalid entries and deadlines, duplicate ids and impossible deadlines.
    Hostile,
}

impl Load {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Light, Self::Heavy, Self::Failing, Self::Hostile];

    /// The kind's name, as in the test names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Light => "light",
            Self::Heavy => "heavy",
            Self::Failing => "failing",
            Self::Hostile => "hostile",
        }
    }
}

/// One round of the suite: the model, the budget and the traffic, all drawn from `seed`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Seeds the arrivals, the request mix and the injected failures.
    pub seed: u64,
    /// The budget batch size handed to the policy's constructor.
    pub budget: usize,
    /// Blocks `L` of the mock model.
    pub layers: usize,
    /// Requests sent.
    pub requests: usize,
    /// Offered load relative to the capacity at full batches over the whole model (1 = that
    /// capacity); arrivals are Poisson.
    pub load: f64,
    /// Probability that an executor call fails.
    pub fail_rate: f64,
    /// Probability that a request has an entry past `L` or a bad deadline (NaN, infinite,
    /// negative).
    pub invalid_rate: f64,
    /// Probability that a request reuses the id of one the worker still holds.
    pub duplicate_rate: f64,
    /// Probability that a request's deadline is earlier than `arrival + remaining(entry, 1)`.
    pub impossible_rate: f64,
    /// Feasible deadlines are `arrival + remaining(entry, 1) * U(1, slack)`.
    pub slack: f64,
}

impl Scenario {
    /// A scenario of kind `load` drawn from `seed`: budget 1 to 12, 0 to 6 blocks, 150
    /// requests.
    pub fn random(seed: u64, load: Load) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let budget = rng.random_range(1..=12);
        let layers = rng.random_range(0..=6);
        let mut s = Self {
            seed,
            budget,
            layers,
            requests: 150,
            load: 0.5,
            fail_rate: 0.0,
            invalid_rate: 0.03,
            duplicate_rate: 0.02,
            impossible_rate: 0.03,
            slack: rng.random_range(2.0..20.0),
        };
        match load {
            Load::Light => s.load = rng.random_range(0.05..0.6),
            Load::Heavy => s.load = rng.random_range(1.5..5.0),
            Load::Failing => {
                s.load = rng.random_range(0.3..1.5);
                s.fail_rate = rng.random_range(0.02..0.15);
            }
            Load::Hostile => {
                s.load = rng.random_range(0.5..2.0);
                s.fail_rate = 0.05;
                s.invalid_rate = 0.25;
                s.duplicate_rate = 0.15;
                s.impossible_rate = 0.25;
            }
        }
        s
    }

    /// Arrivals per simulated second.
    pub fn rate(&self) -> f64 {
        let capacity = self.budget as f64 / ((self.layers + 1) as f64 * block_time(self.budget));
        (self.load * capacity).max(1e-9)
    }

    /// The requests of this scenario, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5EED_A441_7A15);
        let rem = remaining(self.layers);
        let rate = self.rate();
        let mut t = 0.0;
        (0..self.requests)
            .map(|_| {
                // Poisson arrivals: exponential gaps.
                t += -(1.0 - rng.random::<f64>()).ln() / rate;
                let mut entry = rng.random_range(0..=self.layers);
                let mut deadline = t + rem(entry, 1) * rng.random_range(1.0..self.slack.max(1.01));
                if rng.random_bool(self.impossible_rate) {
                    deadline = t + rem(entry, 1) * rng.random_range(0.0..0.99);
                }
                if rng.random_bool(self.invalid_rate) {
                    match rng.random_range(0..4) {
                        0 => entry = self.layers + rng.random_range(1..4),
                        1 => deadline = f64::NAN,
                        2 => deadline = f64::INFINITY,
                        _ => deadline = -1.0,
                    }
                }
                Arrival {
                    time: t,
                    entry,
                    deadline,
                    duplicate: rng.random_bool(self.duplicate_rate),
                }
            })
            .collect()
    }
}

/// One request of a [`Scenario`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arrival {
    /// Arrival time, simulated seconds.
    pub time: f64,
    /// Entry position (may be past `L`: invalid).
    pub entry: usize,
    /// Deadline (may be NaN, infinite or negative: invalid).
    pub deadline: f64,
    /// Whether it reuses the id of a request still held (when there is one).
    pub duplicate: bool,
}
