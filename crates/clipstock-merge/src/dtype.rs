//! Storage dtypes: the workspace's one vocabulary, from `clipstock-tensors`.

pub use clipstock_tensors::DType;
