//! A [`DeviceSpec`] made a burn `Device`. The spelling (parsing, display, serde, the error
//! text) is the config crate's, so run files and every `--device` flag agree; this file only
//! knows which burn backend each one is and whether it is compiled in.

use burn::tensor::Device;

pub use clipstock_config::DeviceSpec;

use crate::error::ModelError;

/// The burn side of a [`DeviceSpec`] (a trait because the type is the config crate's).
pub trait BurnDevice: Copy {
    /// The burn device, chosen explicitly (with wgpu compiled in, `Device::default()` would
    /// silently pick it even on a CPU-only machine).
    fn device(self) -> Result<Device, ModelError>;

    /// The same device with autodiff enabled, for training.
    fn autodiff_device(self) -> Result<Device, ModelError> {
        Ok(self.device()?.autodiff())
    }
}

impl BurnDevice for DeviceSpec {
    fn device(self) -> Result<Device, ModelError> {
        match self {
            DeviceSpec::Cpu | DeviceSpec::Flex => Ok(Device::flex()),
            DeviceSpec::NdArray => ndarray(),
            DeviceSpec::Wgpu(i) => wgpu(i),
            DeviceSpec::Vulkan(i) => vulkan(i),
            DeviceSpec::Cuda(i) => cuda(i),
        }
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

/// Index 0 lets wgpu pick its preferred adapter (a discrete GPU, else an integrated or
/// software one such as lavapipe); higher indices address discrete GPUs explicitly.
#[cfg(feature = "wgpu")]
fn adapter(index: usize) -> burn::tensor::DeviceKind {
    use burn::tensor::DeviceKind;
    if index == 0 {
        DeviceKind::DefaultDevice
    } else {
        DeviceKind::DiscreteGpu(index)
    }
}

#[cfg(feature = "wgpu")]
fn wgpu(index: usize) -> Result<Device, ModelError> {
    Ok(Device::wgpu(adapter(index)))
}
#[cfg(not(feature = "wgpu"))]
fn wgpu(_index: usize) -> Result<Device, ModelError> {
    Err(ModelError::DeviceNotCompiled("wgpu".into(), "wgpu"))
}

#[cfg(feature = "vulkan")]
fn vulkan(index: usize) -> Result<Device, ModelError> {
    // The API is pinned, so a machine without a usable Vulkan adapter fails at the first
    // tensor instead of running WGSL on another API.
    Ok(Device::vulkan(adapter(index)))
}
#[cfg(not(feature = "vulkan"))]
fn vulkan(_index: usize) -> Result<Device, ModelError> {
    Err(ModelError::DeviceNotCompiled("vulkan".into(), "vulkan"))
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

    /// Parsing is the config crate's (tested there); the CPU spellings must make a device in
    /// every build.
    #[test]
    fn the_cpu_spellings_make_a_device() {
        for text in ["cpu", "flex"] {
            let spec: DeviceSpec = text.parse().expect("a device spelling");
            assert!(spec.device().is_ok(), "{text}");
            assert!(spec.autodiff_device().is_ok(), "{text}");
        }
    }

    #[test]
    fn a_backend_left_out_of_the_build_is_named() {
        if !cfg!(feature = "vulkan") {
            let e = DeviceSpec::Vulkan(0)
                .device()
                .expect_err("vulkan is not compiled in");
            assert!(e.to_string().contains("vulkan"), "{e}");
        }
        if !cfg!(feature = "cuda") {
            let e = DeviceSpec::Cuda(0)
                .device()
                .expect_err("cuda is not compiled in");
            assert!(e.to_string().contains("cuda"), "{e}");
        }
    }
}
