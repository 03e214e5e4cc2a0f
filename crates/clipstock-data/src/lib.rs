//! ImageNet and its five distribution shifts for CLIP classifiers: dataset layouts, class
//! projections (ImageNet-R/A restriction, ObjectNet max projection), CLIP preprocessing, train
//! augmentation and a parallel, prefetching batch loader.
//!
//! No burn and no model here: a batch is a plain `[B, 3, S, S]` f32 buffer, so this crate builds
//! and tests in seconds and the evaluator and trainer share one input pipeline.

mod error;
mod rng;

pub mod classes;
pub mod fixtures;
pub mod holdout;
pub mod layouts;
pub mod loader;
pub mod preprocess;
pub mod quickstart;
pub mod randaugment;

pub use error::DataError;
