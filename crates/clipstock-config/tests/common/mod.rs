//! What both of the crate's integration tests start from.

/// The smallest valid run file: every other key takes its default.
pub const MINIMAL: &str = r#"
[run]
name = "t"
seeds = [1, 2]

[model]
weights = "w.safetensors"

[data]
root = "datasets"
"#;
