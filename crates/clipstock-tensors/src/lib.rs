//! The tensor-and-file layer shared by the model, merge and data crates, without burn:
//!
//! - [`DType`], the storage dtypes of safetensors and the f32 conversions;
//! - [`HostTensor`] and [`StateDict`], named f32 tensors that remember their storage dtype;
//! - [`Source`], tensors read by slices, and [`SafetensorsFile`] (memory-mapped or positioned
//!   reads, validated header), its file implementation, and
//!   [`SafetensorsWriter`] (streaming, header computed up front);
//! - [`AtomicFile`] and [`write_atomic`], the one way files are replaced, and
//!   [`remove_stale_temporaries`], which sweeps what killed writers left;
//! - [`rng`], the one pseudo-random generator (splitmix64);
//! - [`fault`], the named crash points of the fault-injection suite.

pub mod atomic;
pub mod dtype;
pub mod error;
pub mod fault;
pub mod reader;
pub mod rng;
pub mod source;
pub mod stale;
pub mod state;
pub mod writer;

pub use atomic::{AtomicFile, write_atomic};
pub use dtype::DType;
pub use error::{IoError, Result, TensorsError};
pub use reader::{ReadMode, SafetensorsFile, TensorInfo};
pub use rng::{SplitMix64, mix64};
pub use source::{Catalog, Source};
pub use stale::{remove_stale_temporaries, removed_line, scratch_prefix};
pub use state::{HostTensor, NonFinite, StateDict, looks_like_safetensors};
pub use writer::{HeaderEntry, SafetensorsWriter};
