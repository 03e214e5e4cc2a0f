//! CLIP ViT in burn: architectures, the vision and text towers, checkpoint import/export in the
//! OpenAI/open_clip, HF transformers and model-soups namings, tokenization and the zero-shot
//! head. Knows nothing about datasets or training.

pub mod arch;
pub mod device;
pub mod error;
pub mod fused;
pub mod load;
pub mod model;
pub mod naming;
pub mod state;
pub mod tokenizer;
pub mod zeroshot;

pub use arch::ClipArch;
pub use device::{BurnDevice, DeviceSpec};
pub use error::{ModelError, Result};
pub use load::Checkpoint;
pub use model::{ClipModel, ImageClassifier};
pub use naming::Naming;
pub use state::{DType, HostTensor, StateDict};
pub use tokenizer::ClipTokenizer;
