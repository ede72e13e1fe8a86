//! How a labelled data set is shared out for selective distillation (SPEC §6): a held-out test
//! set, each client's private samples from its own classes, and the public rest, which the
//! cloud holds with its labels.

use collab_core::{Error, Result};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// One client's share: its classes, its private samples and its test samples (indices into the
/// data set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientShare {
    /// The classes the client holds.
    pub classes: Vec<usize>,
    /// Its private samples (never seen by the cloud), spread evenly over its classes.
    pub private: Vec<usize>,
    /// The test samples of its classes.
    pub test: Vec<usize>,
}

/// A data set shared out between the cloud and its clients.
///
/// Invariants: `public`, every client's `private` and every client's `test` are disjoint; a
/// client's private and test samples belong to its classes; the test samples of every class
/// (`test_per_class` of each, or all it has) are in no other set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSplit {
    /// The cloud's labelled public samples.
    pub public: Vec<usize>,
    /// One share per client.
    pub clients: Vec<ClientShare>,
}

impl ClientSplit {
    /// Shares out samples labelled `labels`: first `test_per_class` samples of every class are
    /// held out as test (seeded shuffle), then each client takes `private_per_client` of the
    /// remaining samples of its `client_classes` (round-robin over its classes), and the rest
    /// is public.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no clients, a client without classes, a class held by two
    /// clients, or too few samples of a client's classes for its private share.
    pub fn by_class(
        labels: &[usize],
        client_classes: &[Vec<usize>],
        test_per_class: usize,
        private_per_client: usize,
        seed: u64,
    ) -> Result<Self> {
        let bad = |m: String| Err(Error::InvalidInput(format!("client split: {m}")));
        if client_classes.is_empty() || client_classes.iter().any(Vec::is_empty) {
            return bad("every split needs clients, each with at least one class".into());
        }
        let mut owner = std::collections::HashMap::new();
        for (c, classes) in client_classes.iter().enumerate() {
            for &k in classes {
                if owner.insert(k, c).is_some() {
                    return bad(format!("class {k} is held by two clients"));
                }
            }
        }
        let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
        let mut rng = StdRng::seed_from_u64(seed);
        // Per class, its samples in a seeded order: test first, then private, rest public.
        let mut by_class: Vec<Vec<usize>> = vec![vec![]; classes];
        for (i, &l) in labels.iter().enumerate() {
            by_class[l].push(i);
        }
        let mut test_of: Vec<Vec<usize>> = Vec::with_capacity(classes);
        for samples in &mut by_class {
            samples.shuffle(&mut rng);
            let t = test_per_class.min(samples.len());
            test_of.push(samples.drain(..t).collect());
        }
        let mut clients = Vec::with_capacity(client_classes.len());
        for classes_of in client_classes {
            let mut private = Vec::with_capacity(private_per_client);
            let mut round = 0;
            while private.len() < private_per_client {
                let before = private.len();
                for &k in classes_of {
                    if private.len() < private_per_client
                        && let Some(&i) = by_class.get(k).and_then(|s| s.get(round))
                    {
                        private.push(i);
                    }
                }
                if private.len() == before {
                    return bad(format!(
                        "classes {classes_of:?} have {} samples besides the test set, \
                         fewer than the {private_per_client} private ones asked",
                        private.len()
                    ));
                }
                round += 1;
            }
            let test = classes_of
                .iter()
                .flat_map(|&k| test_of.get(k).cloned().unwrap_or_default())
                .collect();
            clients.push(ClientShare {
                classes: classes_of.clone(),
                private,
                test,
            });
        }
        let taken: std::collections::HashSet<usize> = clients
            .iter()
            .flat_map(|c| c.private.iter().copied())
            .chain(test_of.iter().flatten().copied())
            .collect();
        let public = (0..labels.len()).filter(|i| !taken.contains(i)).collect();
        Ok(Self { public, clients })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn shares_are_disjoint_and_within_each_clients_classes() {
        let labels: Vec<usize> = (0..300).map(|i| (i * 7) % 10).collect();
        let split =
            ClientSplit::by_class(&labels, &[vec![0, 1, 2], vec![5, 6]], 4, 20, 3).expect("split");
        let mut seen = HashSet::new();
        for i in split.public.iter().chain(
            split
                .clients
                .iter()
                .flat_map(|c| c.private.iter().chain(&c.test)),
        ) {
            assert!(seen.insert(*i), "sample {i} in two sets");
        }
        // Test samples of classes no client holds are held out too.
        assert_eq!(seen.len(), 300 - 4 * 5);
        for c in &split.clients {
            assert_eq!(c.private.len(), 20);
            assert_eq!(c.test.len(), 4 * c.classes.len());
            for &i in c.private.iter().chain(&c.test) {
                assert!(c.classes.contains(&labels[i]));
            }
            // Round-robin: the private share spreads over the classes.
            for &k in &c.classes {
                let n = c.private.iter().filter(|&&i| labels[i] == k).count();
                assert!(n >= 20 / c.classes.len(), "class {k}: {n}");
            }
        }
        assert_eq!(
            split,
            ClientSplit::by_class(&labels, &[vec![0, 1, 2], vec![5, 6]], 4, 20, 3).expect("again"),
            "seeded"
        );
    }

    #[test]
    fn impossible_splits_are_refused() {
        let labels = vec![0, 0, 1, 1, 2, 2];
        assert!(ClientSplit::by_class(&labels, &[], 0, 1, 0).is_err());
        assert!(ClientSplit::by_class(&labels, &[vec![0], vec![0, 1]], 0, 1, 0).is_err());
        assert!(ClientSplit::by_class(&labels, &[vec![0]], 1, 2, 0).is_err());
        assert!(ClientSplit::by_class(&labels, &[vec![0], vec![9]], 0, 1, 0).is_err());
        let ok = ClientSplit::by_class(&labels, &[vec![0], vec![1]], 1, 1, 0).expect("fits");
        assert_eq!(ok.public.len(), 1, "the non-test sample of class 2");
    }
}
