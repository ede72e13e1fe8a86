//! Criterion bench of OTAS token allocation (SPEC §4, Alg. 2): the DP's decision time for 64
//! pending batches over the 8 published gammas, on seeded random batches of several tasks
//! with a [`ProfileTable`] profile; the load-based rule (Alg. 3) on the same input for
//! comparison. The serving loop calls the allocator once per batch it runs, so this time is
//! spent on the server's critical path (goal: well under 1 ms).
//!
//! ```text
//! cargo bench -p collab-policies --bench token_dp
//! ```

use std::hint::black_box;

use collab_core::adaptive::{Batch, LoadInfo, ProfileTable, Query, TokenAllocator};
use collab_policies::token::allocate::DpAllocator;
use collab_policies::token::load_rule::LoadRule;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GAMMAS: [i32; 8] = [-20, -15, -10, -5, 0, 2, 4, 8];
const TASKS: usize = 3;

/// Three tasks over the published gammas, measured at batch sizes 1..64: ViT-B-like
/// per-sample times (about 2.5 ms at gamma 0, batch 1, falling with batch size and with
/// merging) and accuracies rising with gamma.
fn profile() -> ProfileTable {
    ProfileTable::from_fn(
        GAMMAS.to_vec(),
        vec![1, 2, 4, 8, 16, 32, 64],
        TASKS,
        |t, g| Some((0.75 + 0.005 * f64::from(g) - 0.05 * t as f64).clamp(0.0, 1.0)),
        |t, g, b| {
            // Merging 20 tokens per layer saves about 40% of the compute, 8 prompts cost 16%.
            let work = 1.0 + 0.02 * f64::from(g);
            Some(2.5e-3 * work * (0.2 + 0.8 / (b as f64).sqrt()) * (1.0 + 0.1 * t as f64))
        },
    )
    .expect("valid profile")
}

/// 64 batches of 1-16 queries of the SPEC's six query types, arriving over the last second.
fn batches(now: f64) -> Vec<Batch> {
    let mut rng = StdRng::seed_from_u64(6);
    let types = [
        (0, 0.6, 0.3),
        (0, 1.0, 0.01),
        (1, 0.6, 1.0),
        (1, 1.0, 0.2),
        (2, 0.6, 0.3),
        (2, 1.0, 0.01),
    ];
    let mut id = 0;
    (0..64)
        .map(|_| {
            let n = rng.random_range(1..=16);
            let queries = (0..n)
                .map(|_| {
                    let (task, budget, utility) = types[rng.random_range(0..types.len())];
                    let arrival = now - rng.random_range(0.0..0.5);
                    id += 1;
                    Query {
                        id,
                        task,
                        arrival,
                        deadline: arrival + budget,
                        utility,
                    }
                })
                .collect();
            Batch::new(queries)
        })
        .collect()
}

fn token_dp(c: &mut Criterion) {
    let p = profile();
    let now = 10.0;
    let bs = batches(now);
    let load = LoadInfo {
        rate: 600.0,
        uptime: 60.0,
    };
    let mut g = c.benchmark_group("token allocation 64 batches x 8 gammas");
    let mut dp = DpAllocator::published();
    g.bench_function("dp (Alg. 2)", |b| {
        b.iter(|| dp.allocate(black_box(now), black_box(&bs), &p, &load))
    });
    let mut rule = LoadRule::published();
    g.bench_function("load rule (Alg. 3)", |b| {
        b.iter(|| rule.allocate(black_box(now), black_box(&bs), &p, &load))
    });
    g.finish();
}

criterion_group!(benches, token_dp);
criterion_main!(benches);
