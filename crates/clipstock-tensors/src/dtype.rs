//! Storage dtypes of safetensors and the conversions to and from the f32 everything computes in.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// A safetensors storage dtype. Values are held as f32 in memory: f16 and bf16 round-trip
/// exactly through f32, so writing a tensor back in its own dtype is lossless. Only the four
/// float dtypes hold values; the others (e.g. HF's `position_ids`, stored as I64) are skipped
/// when a state dict is read and copied byte for byte by the merge.
///
/// Serialised with the safetensors header spelling (`"BF16"`); the lowercase float names
/// (`"bf16"`) are accepted too when reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DType {
    #[serde(alias = "f64")]
    F64,
    #[serde(alias = "f32")]
    F32,
    #[serde(alias = "f16")]
    F16,
    #[serde(alias = "bf16")]
    BF16,
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
}

impl DType {
    /// The dtype's spelling in a safetensors header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
        }
    }

    /// Parses a safetensors header dtype.
    pub fn from_safetensors_name(s: &str) -> Option<DType> {
        Some(match s {
            "F64" => DType::F64,
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "BOOL" => DType::Bool,
            "U8" => DType::U8,
            "I8" => DType::I8,
            "U16" => DType::U16,
            "I16" => DType::I16,
            "U32" => DType::U32,
            "I32" => DType::I32,
            "U64" => DType::U64,
            "I64" => DType::I64,
            "F8_E4M3" => DType::F8E4M3,
            "F8_E5M2" => DType::F8E5M2,
            _ => return None,
        })
    }

    /// Parses a user-facing float dtype name (`f32`, `float16`, `bf16`, `double`, ...), e.g.
    /// an export's or a merge's output dtype. Non-float dtypes are refused: no value is ever
    /// written in them.
    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" | "float" => Some(DType::F32),
            "f16" | "float16" | "fp16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            "f64" | "float64" | "fp64" | "double" => Some(DType::F64),
            _ => None,
        }
    }

    /// [`DType::parse`], under the name the merge crate has always used.
    pub fn parse_float(s: &str) -> Option<DType> {
        DType::parse(s)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::U64 | DType::I64 => 8,
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::U16 | DType::I16 => 2,
            DType::Bool | DType::U8 | DType::I8 | DType::F8E4M3 | DType::F8E5M2 => 1,
        }
    }

    /// Whether values of this dtype are held (as f32) and computed on.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

/// Decodes little-endian `bytes` of a float dtype into `out` (same element count).
///
/// The per-element `from_le_bytes` loops compile to plain (vectorised) loads on little-endian
/// hosts, so there is no separate aligned fast path to keep in sync.
pub fn decode_into(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    debug_assert!(dtype.is_float());
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::BF16 => {
            // bf16 is the top half of an f32: widening is a shift, exact.
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *o = f64::from_le_bytes(b) as f32;
            }
        }
        _ => {
            // Callers only decode float tensors (they check `is_float` first); fill with NaN
            // rather than panic so a logic error shows up as a non-finite tensor error.
            out.fill(f32::NAN);
        }
    }
}

/// Appends `values` encoded as little-endian `dtype` (round to nearest even for f16/bf16).
pub fn encode_into(dtype: DType, values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len() * dtype.size());
    match dtype {
        DType::F32 => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        DType::BF16 => {
            for v in values {
                out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        DType::F16 => {
            for v in values {
                out.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        DType::F64 => {
            for v in values {
                out.extend_from_slice(&f64::from(*v).to_le_bytes());
            }
        }
        _ => {
            // Unreachable by construction (callers refuse non-float output dtypes first); write
            // zeros of the right length rather than a short buffer that would shift the file.
            out.resize(out.len() + values.len() * dtype.size(), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_every_float_dtype() {
        let v = [0.0f32, -1.5, 3.25, 1e-3, -65504.0];
        for dt in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            let mut bytes = Vec::new();
            encode_into(dt, &v, &mut bytes);
            assert_eq!(bytes.len(), v.len() * dt.size());
            let mut back = [0f32; 5];
            decode_into(dt, &bytes, &mut back);
            for (a, b) in v.iter().zip(back) {
                let tol = match dt {
                    DType::F16 => 1e-3 * a.abs().max(1e-3),
                    DType::BF16 => 1e-2 * a.abs().max(1e-3),
                    _ => 0.0,
                };
                assert!((a - b).abs() <= tol, "{dt}: {a} -> {b}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for dt in [
            DType::F32,
            DType::BF16,
            DType::I64,
            DType::F8E4M3,
            DType::Bool,
        ] {
            assert_eq!(
                DType::from_safetensors_name(dt.safetensors_name()),
                Some(dt)
            );
        }
        assert_eq!(DType::parse_float("bfloat16"), Some(DType::BF16));
        assert_eq!(DType::parse_float("i64"), None);
    }

    #[test]
    fn serde_uses_the_header_spelling_and_reads_lowercase() {
        assert_eq!(
            serde_json::to_string(&DType::BF16).expect("json"),
            "\"BF16\""
        );
        assert_eq!(
            serde_json::to_string(&DType::F8E4M3).expect("json"),
            "\"F8_E4M3\""
        );
        let back: DType = serde_json::from_str("\"bf16\"").expect("alias");
        assert_eq!(back, DType::BF16);
    }
}
