//! `cpu | flex | ndarray | wgpu[:N] | vulkan[:N] | cuda[:N]`: the one spelling of a device, for run files
//! (`run.device`, `run.devices`) and every `--device` flag.
//!
//! Only the spelling lives here. Whether a backend is compiled in and whether the ordinal
//! exists is the model crate's business when the burn device is made.

use std::fmt;
use std::str::FromStr;

/// A backend and device ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The fastest CPU backend (measured: flex; see docs/PERFORMANCE.md).
    Cpu,
    Flex,
    NdArray,
    /// `wgpu` alone is ordinal 0, which lets wgpu pick its preferred adapter.
    Wgpu(usize),
    /// wgpu pinned to Vulkan, so kernels are SPIR-V (cooperative matrices, bf16) or the
    /// device fails to come up, rather than falling back to WGSL or another graphics API.
    Vulkan(usize),
    Cuda(usize),
}

/// A string that is not a device; its text is the one every caller shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}`: expected {allowed}", allowed = DeviceSpec::EXPECTED)]
pub struct DeviceSpecError(pub String);

impl DeviceSpec {
    /// The accepted forms, as error messages list them.
    pub const EXPECTED: &'static str =
        "cpu, flex, ndarray, wgpu, wgpu:N, vulkan, vulkan:N, cuda or cuda:N";

    /// The device of the `local_rank`-th process on a machine when they all name this one:
    /// a GPU ordinal moves up by the local rank (`cuda` → `cuda:{local_rank}`), so each
    /// process of an `mpirun` gets its own GPU; the CPU is everyone's.
    pub fn for_local_rank(self, local_rank: usize) -> DeviceSpec {
        match self {
            DeviceSpec::Wgpu(n) => DeviceSpec::Wgpu(n + local_rank),
            DeviceSpec::Vulkan(n) => DeviceSpec::Vulkan(n + local_rank),
            DeviceSpec::Cuda(n) => DeviceSpec::Cuda(n + local_rank),
            cpu => cpu,
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceSpecError;

    /// Exact and lowercase, like every other word of a run file. An ordinal is plain digits
    /// (`usize::from_str` alone would also take `+1`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DeviceSpecError(s.to_owned());
        let (name, ordinal) = match s.split_once(':') {
            Some((name, digits)) => {
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (name, Some(digits.parse::<usize>().map_err(|_| bad())?))
            }
            None => (s, None),
        };
        match (name, ordinal) {
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("flex", None) => Ok(DeviceSpec::Flex),
            ("ndarray", None) => Ok(DeviceSpec::NdArray),
            ("wgpu", n) => Ok(DeviceSpec::Wgpu(n.unwrap_or(0))),
            ("vulkan", n) => Ok(DeviceSpec::Vulkan(n.unwrap_or(0))),
            ("cuda", n) => Ok(DeviceSpec::Cuda(n.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

/// Always with the ordinal for the GPU backends, so logs say which device was used.
impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Flex => f.write_str("flex"),
            DeviceSpec::NdArray => f.write_str("ndarray"),
            DeviceSpec::Wgpu(i) => write!(f, "wgpu:{i}"),
            DeviceSpec::Vulkan(i) => write!(f, "vulkan:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_local_rank_gets_its_own_gpu() {
        assert_eq!(DeviceSpec::Cuda(0).for_local_rank(3), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::Wgpu(2).for_local_rank(1), DeviceSpec::Wgpu(3));
        assert_eq!(
            DeviceSpec::Vulkan(0).for_local_rank(1),
            DeviceSpec::Vulkan(1)
        );
        assert_eq!(DeviceSpec::Cpu.for_local_rank(5), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::Flex.for_local_rank(1), DeviceSpec::Flex);
    }

    #[test]
    fn every_form_parses_and_displays_back() {
        let cases = [
            ("cpu", DeviceSpec::Cpu, "cpu"),
            ("flex", DeviceSpec::Flex, "flex"),
            ("ndarray", DeviceSpec::NdArray, "ndarray"),
            ("wgpu", DeviceSpec::Wgpu(0), "wgpu:0"),
            ("wgpu:2", DeviceSpec::Wgpu(2), "wgpu:2"),
            ("vulkan", DeviceSpec::Vulkan(0), "vulkan:0"),
            ("vulkan:1", DeviceSpec::Vulkan(1), "vulkan:1"),
            ("cuda", DeviceSpec::Cuda(0), "cuda:0"),
            ("cuda:3", DeviceSpec::Cuda(3), "cuda:3"),
        ];
        for (text, spec, shown) in cases {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(spec), "{text}");
            assert_eq!(spec.to_string(), shown);
            assert_eq!(shown.parse::<DeviceSpec>(), Ok(spec), "{shown}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_one_message() {
        for bad in [
            "gpu", "Vulkan", "vulkan:", "tpu", "CUDA", "CUDA:3", "Cpu", " cpu", "cpu:0", "flex:1",
            "cuda:", "cuda:x", "cuda:+1", "wgpu:-1", "cuda:1:2", "",
        ] {
            let e = bad.parse::<DeviceSpec>().expect_err(bad);
            assert_eq!(
                e.to_string(),
                format!("unknown device `{bad}`: expected {}", DeviceSpec::EXPECTED)
            );
        }
    }

    #[test]
    fn serde_uses_the_same_spelling() {
        let json = serde_json::to_string(&DeviceSpec::Cuda(1)).unwrap_or_default();
        assert_eq!(json, "\"cuda:1\"");
        let back: Result<DeviceSpec, _> = serde_json::from_str("\"wgpu\"");
        assert_eq!(back.ok(), Some(DeviceSpec::Wgpu(0)));
        assert!(serde_json::from_str::<DeviceSpec>("\"gpu\"").is_err());
    }
}
