//! `model.arch`: the architecture presets by their open_clip names. The model crate maps each
//! to its sizes (`ClipArch::from(ArchPreset)`).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchPreset {
    VitB32,
    VitB16,
    VitL14,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture `{0}`: expected {names}", names = ARCHS.join(", "))]
pub struct UnknownArch(pub String);

/// Architecture names accepted by `model.arch`, in [`ArchPreset::ALL`]'s order.
pub const ARCHS: [&str; 3] = ["ViT-B-32", "ViT-B-16", "ViT-L-14"];

impl ArchPreset {
    pub const ALL: [ArchPreset; 3] = [ArchPreset::VitB32, ArchPreset::VitB16, ArchPreset::VitL14];

    /// open_clip's name, the run file's spelling.
    pub fn name(self) -> &'static str {
        match self {
            ArchPreset::VitB32 => ARCHS[0],
            ArchPreset::VitB16 => ARCHS[1],
            ArchPreset::VitL14 => ARCHS[2],
        }
    }
}

/// Exactly one of [`ARCHS`].
impl FromStr for ArchPreset {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ArchPreset::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownArch(s.to_owned()))
    }
}

impl fmt::Display for ArchPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in ArchPreset::ALL {
            assert_eq!(a.name().parse::<ArchPreset>(), Ok(a));
            assert_eq!(a.to_string(), a.name());
        }
        let m = "ViT-H-14"
            .parse::<ArchPreset>()
            .expect_err("unknown")
            .to_string();
        assert!(m.contains("ViT-H-14") && m.contains("ViT-B-32"), "{m}");
        assert!("vit-b-32".parse::<ArchPreset>().is_err());
    }
}
