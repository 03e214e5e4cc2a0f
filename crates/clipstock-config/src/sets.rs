//! The six evaluation sets and the one table of their spellings, for `eval.sets` in run files,
//! `clipstock eval --sets`, results files and tables.

use std::fmt;
use std::str::FromStr;

/// The six evaluation sets (SPEC.md §5), and the held-out part of the training set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetName {
    ImageNet,
    ImageNetV2,
    ImageNetSketch,
    ImageNetR,
    ImageNetA,
    ObjectNet,
    /// Training images held out by `data.holdout_per_class`/`data.holdout_file` (model-soups'
    /// "ImageNet2p"): the greedy soup's selection set. Not one of [`SetName::ALL`]: it is not
    /// a folder to open or a name to list in `eval.sets`, it comes with the split.
    ImageNetHoldout,
}

/// A name that is in no row of the spelling table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown evaluation set `{name}`; valid names: {}",
    SetName::valid_names()
)]
pub struct UnknownSetName {
    pub name: String,
}

impl SetName {
    /// The paper's column order (ImageNet, then the five shifts as tabulated).
    pub const ALL: [SetName; 6] = [
        SetName::ImageNet,
        SetName::ImageNetV2,
        SetName::ImageNetSketch,
        SetName::ImageNetR,
        SetName::ObjectNet,
        SetName::ImageNetA,
    ];

    /// Every set a results file may hold, in table order: [`SetName::ALL`], then the held-out
    /// split (after the shifts' mean in tables).
    pub const RESULTS: [SetName; 7] = [
        SetName::ImageNet,
        SetName::ImageNetV2,
        SetName::ImageNetSketch,
        SetName::ImageNetR,
        SetName::ObjectNet,
        SetName::ImageNetA,
        SetName::ImageNetHoldout,
    ];

    /// The spelling table: the key first (the name in configs, results files and JSON), then
    /// the aliases. Run files and the command line accept every entry.
    pub fn spellings(self) -> &'static [&'static str] {
        match self {
            SetName::ImageNet => &["imagenet", "in"],
            SetName::ImageNetV2 => &["imagenet_v2", "imagenetv2", "v2"],
            SetName::ImageNetSketch => &["imagenet_sketch", "sketch"],
            SetName::ImageNetR => &["imagenet_r", "r"],
            SetName::ImageNetA => &["imagenet_a", "a"],
            SetName::ObjectNet => &["objectnet"],
            SetName::ImageNetHoldout => &["imagenet_holdout"],
        }
    }

    /// The name used in configs, results files and on the command line (also the serde name).
    pub fn key(self) -> &'static str {
        self.spellings()[0]
    }

    /// Exactly one entry of the table, as a run file must write it (TOML values are
    /// case-sensitive everywhere else in the file too).
    pub fn from_name(s: &str) -> Result<SetName, UnknownSetName> {
        SetName::ALL
            .into_iter()
            .find(|set| set.spellings().contains(&s))
            .ok_or_else(|| UnknownSetName { name: s.to_owned() })
    }

    /// The command-line spelling: the table, read case-insensitively and with `-` for `_`
    /// (`--sets ImageNet-R` is what people type).
    pub fn parse(s: &str) -> Result<SetName, UnknownSetName> {
        let folded = s.trim().to_ascii_lowercase().replace('-', "_");
        SetName::from_name(&folded).map_err(|_| UnknownSetName { name: s.to_owned() })
    }

    /// `imagenet, imagenet_v2, … (or in, imagenetv2, v2, …)`, for error messages.
    pub fn valid_names() -> String {
        let keys: Vec<&str> = SetName::ALL.iter().map(|s| s.key()).collect();
        let aliases: Vec<&str> = SetName::ALL
            .iter()
            .flat_map(|s| s.spellings().iter().skip(1).copied())
            .collect();
        format!("{} (or {})", keys.join(", "), aliases.join(", "))
    }

    /// The results-table header.
    pub fn title(self) -> &'static str {
        match self {
            SetName::ImageNet => "ImageNet",
            SetName::ImageNetV2 => "IN-V2",
            SetName::ImageNetSketch => "IN-Sketch",
            SetName::ImageNetR => "IN-R",
            SetName::ImageNetA => "IN-A",
            SetName::ObjectNet => "ObjectNet",
            SetName::ImageNetHoldout => "held-out",
        }
    }

    /// The number of images in the published set (SPEC.md §5); the held-out split has none
    /// (its size is the split's), and is never checked against one.
    pub fn published_size(self) -> usize {
        match self {
            SetName::ImageNet => 50_000,
            SetName::ImageNetV2 => 10_000,
            SetName::ImageNetSketch => 50_889,
            SetName::ImageNetR => 30_000,
            SetName::ImageNetA => 7_500,
            SetName::ObjectNet => 18_574,
            SetName::ImageNetHoldout => 0,
        }
    }

    /// True for the five distribution shifts whose mean is the OOD score.
    pub fn is_shift(self) -> bool {
        !matches!(self, SetName::ImageNet | SetName::ImageNetHoldout)
    }
}

/// The command-line spelling ([`SetName::parse`]), so clap can take `--sets` as `SetName`s.
impl FromStr for SetName {
    type Err = UnknownSetName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SetName::parse(s)
    }
}

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl serde::Serialize for SetName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

/// The run-file spelling ([`SetName::from_name`]): keys and aliases, exactly.
impl<'de> serde::Deserialize<'de> for SetName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == SetName::ImageNetHoldout.key() {
            return Ok(SetName::ImageNetHoldout);
        }
        SetName::from_name(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moved from clipstock-data's layouts.rs with the type.
    #[test]
    fn names_round_trip() {
        for s in SetName::ALL {
            assert_eq!(SetName::parse(s.key()).ok(), Some(s));
            assert_eq!(SetName::parse(&s.key().to_uppercase()).ok(), Some(s));
            let json = serde_json::to_string(&s).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", s.key()));
            let back: Option<SetName> = serde_json::from_str(&json).ok();
            assert_eq!(back, Some(s));
        }
        assert_eq!(SetName::parse("v2").ok(), Some(SetName::ImageNetV2));
        let alias: Option<SetName> = serde_json::from_str("\"r\"").ok();
        assert_eq!(alias, Some(SetName::ImageNetR));
        assert_eq!(SetName::parse("imagenet-r").ok(), Some(SetName::ImageNetR));
        let err = SetName::parse("imagenet_c").err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.contains("imagenet_c") && err.contains("objectnet"),
            "{err}"
        );
        let shifts = SetName::ALL.iter().filter(|s| s.is_shift()).count();
        assert_eq!(shifts, 5);
        let total: usize = SetName::ALL.iter().map(|s| s.published_size()).sum();
        assert_eq!(total, 50_000 + 10_000 + 50_889 + 30_000 + 7_500 + 18_574);
    }

    /// Every alias, as a run file writes it and as the command line takes it.
    #[test]
    fn every_spelling_is_accepted_by_files_and_the_command_line() {
        let table = [
            ("imagenet", SetName::ImageNet),
            ("in", SetName::ImageNet),
            ("imagenet_v2", SetName::ImageNetV2),
            ("imagenetv2", SetName::ImageNetV2),
            ("v2", SetName::ImageNetV2),
            ("imagenet_sketch", SetName::ImageNetSketch),
            ("sketch", SetName::ImageNetSketch),
            ("imagenet_r", SetName::ImageNetR),
            ("r", SetName::ImageNetR),
            ("imagenet_a", SetName::ImageNetA),
            ("a", SetName::ImageNetA),
            ("objectnet", SetName::ObjectNet),
        ];
        let all: usize = SetName::ALL.iter().map(|s| s.spellings().len()).sum();
        assert_eq!(all, table.len(), "the test lists the whole table");
        for (name, set) in table {
            assert_eq!(SetName::from_name(name), Ok(set), "file: {name}");
            let from_json: Result<SetName, _> = serde_json::from_str(&format!("\"{name}\""));
            assert_eq!(from_json.ok(), Some(set), "serde: {name}");
            assert_eq!(name.parse::<SetName>(), Ok(set), "cli: {name}");
            let typed = name.to_uppercase().replace('_', "-");
            assert_eq!(typed.parse::<SetName>(), Ok(set), "cli: {typed}");
        }
        // Case and dashes are folded only on the command line.
        assert!(SetName::from_name("ImageNet").is_err());
        assert!(SetName::from_name("imagenet-v2").is_err());
        assert!(SetName::from_name(" v2").is_err());
        assert!("imagenet_c".parse::<SetName>().is_err());
    }

    #[test]
    fn the_message_lists_keys_and_aliases() {
        let m = SetName::from_name("imagenet-c")
            .expect_err("unknown")
            .to_string();
        assert_eq!(
            m,
            "unknown evaluation set `imagenet-c`; valid names: imagenet, imagenet_v2, \
             imagenet_sketch, imagenet_r, objectnet, imagenet_a (or in, imagenetv2, v2, sketch, \
             r, a)"
        );
    }
}
