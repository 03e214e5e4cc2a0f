//! Epoch orders, crops and the quickstart images draw from the workspace's one generator
//! (splitmix64, in `clipstock-tensors`), so none of them changes with a dependency's version.

pub(crate) use clipstock_tensors::rng::{SplitMix64, mix64};
