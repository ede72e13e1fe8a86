//! Split selection (SPEC §1): from measured cost profiles, the network, the server's load and
//! an accuracy table, choose the split point and codec setting that keeps the most blocks on
//! the device while meeting the deadline and the accuracy-loss limit.

mod selector;
mod table;

pub use selector::{Candidate, SelectorConfig, SplitSelector};
pub use table::{AccuracyEntry, AccuracyTable};

#[cfg(test)]
mod tests;
