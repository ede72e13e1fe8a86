//! The [`Distiller`] conformance suite (SPEC §6): [`check_distiller`] drives a distiller
//! through seeded random cases and hostile ones and checks its contract:
//! - every upload it makes passes [`Upload::check`] and stands for no more samples than the
//!   device holds; it is the same for the same seed;
//! - every selection holds distinct indices into the public set, at most all of them, the
//!   same for the same seed;
//! - hostile input (empty sets, NaN, vectors of unequal lengths, uploads of another kind or
//!   with tampered counts) is answered with an error or a valid result, never a panic;
//! - a well-formed case (64 private and 256 public probability vectors over 10 classes) is
//!   served: the upload and the selection on it succeed.
//!
//! Selection sees only the upload by its signature: nothing of the device's private data
//! reaches it except what the device chose to upload.

use collab_core::distill::{Distiller, Upload, UploadKind};
use collab_core::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `n` class-probability vectors over `classes`, peaked on random classes (a softmax of
/// random logits with one raised).
fn probabilities(rng: &mut StdRng, n: usize, classes: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let peak = rng.random_range(0..classes.max(1));
            let logits: Vec<f32> = (0..classes)
                .map(|c| rng.random_range(-1.0f32..1.0) + if c == peak { 3.0 } else { 0.0 })
                .collect();
            let max = logits.iter().copied().fold(f32::MIN, f32::max);
            let e: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        })
        .collect()
}

/// Checks one selection against the public set's size.
fn check_selection(name: &str, what: &str, sel: &[usize], public: usize) -> Result<()> {
    let fail = |m: String| {
        Err(Error::InvalidInput(format!(
            "distiller `{name}`, {what}: {m}"
        )))
    };
    if sel.len() > public {
        return fail(format!("{} selected of {public} public samples", sel.len()));
    }
    let mut seen = vec![false; public];
    for &i in sel {
        if i >= public {
            return fail(format!("index {i} of {public} public samples"));
        }
        if seen[i] {
            return fail(format!("public sample {i} selected twice"));
        }
        seen[i] = true;
    }
    Ok(())
}

/// Tampered copies of a valid upload: other kinds, counts of 0 and `usize::MAX`, a vector cut
/// short, a NaN.
fn tampered(up: &Upload) -> Vec<Upload> {
    let mut out = Vec::new();
    for kind in [
        UploadKind::Nothing,
        UploadKind::Count,
        UploadKind::PerSample,
        UploadKind::Prototypes { group_size: 1 },
        UploadKind::Prototypes { group_size: 1000 },
    ] {
        out.push(Upload { kind, ..up.clone() });
    }
    for m in [0, usize::MAX] {
        let mut u = up.clone();
        u.members = vec![m; u.members.len().max(1)];
        out.push(u);
    }
    if let Some(v) = up.vectors.first() {
        let mut u = up.clone();
        u.vectors[0] = v[..v.len() / 2].to_vec();
        out.push(u);
        let mut u = up.clone();
        u.vectors[0][0] = f32::NAN;
        out.push(u);
    }
    out
}

/// Runs `distiller` through `rounds` seeded cases (see the module docs).
///
/// # Errors
/// [`Error::InvalidInput`] naming the distiller, the round and the broken rule.
pub fn check_distiller(distiller: &dyn Distiller, rounds: usize, seed: u64) -> Result<()> {
    let name = distiller.name();
    let mut rng = StdRng::seed_from_u64(seed);
    let (private, public) = (
        probabilities(&mut rng, 64, 10),
        probabilities(&mut rng, 256, 10),
    );
    let up = distiller.upload(&private, seed).map_err(|e| {
        Error::InvalidInput(format!(
            "distiller `{name}` refused a well-formed upload of 64 samples: {e}"
        ))
    })?;
    let sel = distiller.select(&up, &public, seed).map_err(|e| {
        Error::InvalidInput(format!(
            "distiller `{name}` refused to select on its own well-formed upload: {e}"
        ))
    })?;
    check_selection(&name, "the well-formed case", &sel, public.len())?;
    for round in 0..rounds {
        let classes = rng.random_range(2..12);
        let (m, p) = (rng.random_range(0..48), rng.random_range(0..160));
        let private = probabilities(&mut rng, m, classes);
        let public = probabilities(&mut rng, p, classes);
        let s = rng.random::<u64>();
        let what = format!(
            "round {round} ({} private, {} public, {classes} classes)",
            private.len(),
            public.len()
        );
        let fail = |m: String| {
            Err(Error::InvalidInput(format!(
                "distiller `{name}`, {what}: {m}"
            )))
        };
        match distiller.upload(&private, s) {
            Ok(up) => {
                if let Err(e) = up.check() {
                    return fail(format!("its upload breaks the invariants: {e}"));
                }
                if up.samples() > private.len() && up.kind != UploadKind::Nothing {
                    return fail(format!(
                        "the upload stands for {} samples of {}",
                        up.samples(),
                        private.len()
                    ));
                }
                if distiller.upload(&private, s).ok().as_ref() != Some(&up) {
                    return fail("two uploads with one seed differ".into());
                }
                match distiller.select(&up, &public, s) {
                    Ok(sel) => {
                        check_selection(&name, &what, &sel, public.len())?;
                        if distiller.select(&up, &public, s).ok().as_ref() != Some(&sel) {
                            return fail("two selections with one seed differ".into());
                        }
                    }
                    Err(Error::InvalidInput(_)) => {}
                    Err(e) => return fail(format!("select failed on its own upload: {e}")),
                }
                for bad in tampered(&up) {
                    if let Ok(sel) = distiller.select(&bad, &public, s) {
                        check_selection(
                            &name,
                            &format!("{what}, tampered upload"),
                            &sel,
                            public.len(),
                        )?;
                    }
                }
            }
            Err(Error::InvalidInput(_)) => {}
            Err(e) => return fail(format!("upload failed with a non-input error: {e}")),
        }
        // Hostile private data: NaN, unequal lengths.
        let mut hostile = private.clone();
        if let Some(v) = hostile.first_mut() {
            v[0] = f32::NAN;
        }
        hostile.push(vec![0.5; classes + 1]);
        if let Ok(up) = distiller.upload(&hostile, s)
            && let Err(e) = up.check()
        {
            return fail(format!(
                "an upload of hostile data breaks the invariants: {e}"
            ));
        }
    }
    Ok(())
}
