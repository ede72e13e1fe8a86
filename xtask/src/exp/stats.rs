//! Small statistics used by the experiment reports (they live in `collab_core::stats`, where
//! tests and users reach them too).

pub(crate) use collab_core::stats::spearman;
