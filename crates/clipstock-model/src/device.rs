//! `--device` parsing: one flag for every backend compiled in.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::ModelError;

/// A backend and device index chosen on the command line or in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The fastest CPU backend (measured: flex; see docs/PERFORMANCE.md).
    Cpu,
    Flex,
    NdArray,
    Wgpu(usize),
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((n, i)) => (
                n,
                i.parse::<usize>()
                    .map_err(|_| ModelError::UnknownDevice(s.to_string()))?,
            ),
            None => (lower.as_str(), 0),
        };
        match name {
            "cpu" => Ok(DeviceSpec::Cpu),
            "flex" => Ok(DeviceSpec::Flex),
            "ndarray" => Ok(DeviceSpec::NdArray),
            "wgpu" | "gpu" | "vulkan" => Ok(DeviceSpec::Wgpu(index)),
            "cuda" => Ok(DeviceSpec::Cuda(index)),
            _ => Err(ModelError::UnknownDevice(s.to_string())),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Flex => f.write_str("flex"),
            DeviceSpec::NdArray => f.write_str("ndarray"),
            DeviceSpec::Wgpu(i) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// The burn device, chosen explicitly (with wgpu compiled in, `Device::default()` would
    /// silently pick it even on a CPU-only machine).
    pub fn device(self) -> Result<Device, ModelError> {
        match self {
            DeviceSpec::Cpu | DeviceSpec::Flex => Ok(Device::flex()),
            DeviceSpec::NdArray => ndarray(),
            DeviceSpec::Wgpu(i) => wgpu(i),
            DeviceSpec::Cuda(i) => cuda(i),
        }
    }

    /// The same device with autodiff enabled, for training.
    pub fn autodiff_device(self) -> Result<Device, ModelError> {
        Ok(self.device()?.autodiff())
    }

    /// Backends compiled into this build.
    pub fn available() -> Vec<&'static str> {
        let mut v = vec!["cpu", "flex"];
        if cfg!(feature = "ndarray") {
            v.push("ndarray");
        }
        if cfg!(feature = "wgpu") {
            v.push("wgpu");
        }
        if cfg!(feature = "cuda") {
            v.push("cuda");
        }
        v
    }
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
fn ndarray() -> Result<Device, ModelError> {
    Ok(Device::ndarray())
}
#[cfg(not(feature = "ndarray"))]
fn ndarray() -> Result<Device, ModelError> {
    Err(ModelError::DeviceNotCompiled("ndarray".into(), "ndarray"))
}

#[cfg(feature = "wgpu")]
fn wgpu(index: usize) -> Result<Device, ModelError> {
    use burn::tensor::DeviceKind;
    // Index 0 lets wgpu pick its preferred adapter (a discrete GPU, else an integrated or
    // software one such as lavapipe); higher indices address discrete GPUs explicitly.
    Ok(if index == 0 {
        Device::wgpu(DeviceKind::DefaultDevice)
    } else {
        Device::wgpu(DeviceKind::DiscreteGpu(index))
    })
}
#[cfg(not(feature = "wgpu"))]
fn wgpu(_index: usize) -> Result<Device, ModelError> {
    Err(ModelError::DeviceNotCompiled("wgpu".into(), "wgpu"))
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device, ModelError> {
    Ok(Device::cuda(index))
}
#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Device, ModelError> {
    Err(ModelError::DeviceNotCompiled("cuda".into(), "cuda"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!("cpu".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cpu));
        assert_eq!(
            "CUDA:3".parse::<DeviceSpec>().ok(),
            Some(DeviceSpec::Cuda(3))
        );
        assert_eq!("wgpu".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Wgpu(0)));
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }
}
