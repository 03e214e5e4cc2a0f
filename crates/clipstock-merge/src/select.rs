//! Which tensors get the merge method (include/exclude patterns) and which tensors share one
//! ratio (group patterns). Patterns are regular expressions searched anywhere in the tensor
//! name, as `grep -E` does; anchor them with `^`/`$` to match whole names.

use std::collections::BTreeMap;

use regex::Regex;

use crate::error::{MergeError, Result};

/// Name of the capture that marks a group member's distinguishing part in a group pattern.
pub const MEMBER_CAPTURE: &str = "member";

/// Tensors whose names match a pattern form groups that share one Model Stock ratio.
///
/// The pattern must contain the named capture `member`: tensors whose names are equal outside
/// that capture belong to one group, keyed by the name with the capture replaced by `*`
/// (e.g. `layers.0.self_attn.*_proj.weight`). Rules that know a checkpoint naming live with
/// that naming (HF's q/k/v: `clipstock_model::naming::HF_QKV_GROUP`); this crate only applies
/// them.
#[derive(Debug, Clone)]
pub struct GroupRule {
    pattern: String,
    regex: Regex,
}

impl GroupRule {
    /// Compiles `pattern`; it must contain the capture `(?P<member>…)`.
    pub fn new(pattern: &str) -> Result<GroupRule> {
        let regex = Regex::new(pattern).map_err(|e| MergeError::Pattern {
            what: "group",
            pattern: pattern.to_string(),
            reason: e.to_string(),
        })?;
        if !regex.capture_names().any(|n| n == Some(MEMBER_CAPTURE)) {
            return Err(MergeError::Pattern {
                what: "group",
                pattern: pattern.to_string(),
                reason: format!(
                    "it has no capture named `{MEMBER_CAPTURE}`, e.g. (?P<member>[qkv])"
                ),
            });
        }
        Ok(GroupRule {
            pattern: pattern.to_string(),
            regex,
        })
    }

    /// The pattern text.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The group key of `name`, or `None` if the rule does not apply to it.
    pub fn key(&self, name: &str) -> Option<String> {
        let caps = self.regex.captures(name)?;
        let m = caps.name(MEMBER_CAPTURE)?;
        Some(format!("{}*{}", &name[..m.start()], &name[m.end()..]))
    }
}

/// Groups `names` by the first rule that applies to each. Returns group key → member names in
/// the order given; names no rule applies to are not listed.
pub fn group_tensors<'a>(
    names: impl IntoIterator<Item = &'a str>,
    rules: &[GroupRule],
) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in names {
        if let Some(key) = rules.iter().find_map(|r| r.key(name)) {
            groups.entry(key).or_default().push(name.to_string());
        }
    }
    groups
}

/// Compiled include/exclude patterns.
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    include: Vec<(String, Regex)>,
    exclude: Vec<(String, Regex)>,
}

impl Selection {
    pub(crate) fn new(include: &[String], exclude: &[String]) -> Result<Selection> {
        let compile = |what: &'static str, pats: &[String]| -> Result<Vec<(String, Regex)>> {
            pats.iter()
                .map(|p| {
                    Regex::new(p)
                        .map(|r| (p.clone(), r))
                        .map_err(|e| MergeError::Pattern {
                            what,
                            pattern: p.clone(),
                            reason: e.to_string(),
                        })
                })
                .collect()
        };
        Ok(Selection {
            include: compile("include", include)?,
            exclude: compile("exclude", exclude)?,
        })
    }

    /// Selected: matches some include pattern (or there are none) and no exclude pattern.
    pub(crate) fn selects(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|(_, r)| r.is_match(name)))
            && !self.exclude.iter().any(|(_, r)| r.is_match(name))
    }

    /// A pattern that matches nothing is almost always a typo (or the wrong naming scheme);
    /// failing beats silently merging everything as plain averages.
    pub(crate) fn check_all_match<'a>(
        &self,
        names: impl Iterator<Item = &'a str> + Clone,
        file: &str,
    ) -> Result<()> {
        for (what, pats) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (p, r) in pats {
                if !names.clone().any(|n| r.is_match(n)) {
                    return Err(MergeError::UnmatchedPattern {
                        what,
                        pattern: p.clone(),
                        file: file.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model crate's HF q/k/v rule (`clipstock_model::naming::HF_QKV_GROUP`), written out
    /// here because this crate's tests must not pull in the model crate (and burn).
    const HF_QKV_GROUP: &str = r"^(?:.*\.)?self_attn\.(?P<member>[qkv])_proj\.(?:weight|bias)$";

    #[test]
    fn hf_qkv_preset_groups_projections_per_layer_and_kind() {
        let names = [
            "vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "vision_model.encoder.layers.0.self_attn.k_proj.weight",
            "vision_model.encoder.layers.0.self_attn.v_proj.weight",
            "vision_model.encoder.layers.0.self_attn.q_proj.bias",
            "vision_model.encoder.layers.0.self_attn.k_proj.bias",
            "vision_model.encoder.layers.0.self_attn.v_proj.bias",
            "vision_model.encoder.layers.0.self_attn.out_proj.weight",
            "vision_model.encoder.layers.1.self_attn.q_proj.weight",
            "vision_model.encoder.layers.1.mlp.fc1.weight",
        ];
        let rule = GroupRule::new(HF_QKV_GROUP).expect("preset compiles");
        let groups = group_tensors(names.iter().copied(), &[rule]);
        assert_eq!(groups.len(), 3);
        assert_eq!(
            groups["vision_model.encoder.layers.0.self_attn.*_proj.weight"],
            vec![names[0], names[1], names[2]]
        );
        assert_eq!(
            groups["vision_model.encoder.layers.0.self_attn.*_proj.bias"].len(),
            3
        );
        assert_eq!(
            groups["vision_model.encoder.layers.1.self_attn.*_proj.weight"],
            vec![names[7]]
        );
    }

    #[test]
    fn group_pattern_needs_the_member_capture() {
        let err = GroupRule::new(r"^(.*)\.q_proj\.weight$").expect_err("no member capture");
        assert!(err.to_string().contains("member"), "{err}");
        assert!(GroupRule::new(r"([").is_err());
    }

    #[test]
    fn selection_include_exclude() {
        let s = Selection::new(&["^visual\\.".into()], &["ln_".into()]).expect("compiles");
        assert!(s.selects("visual.conv1.weight"));
        assert!(!s.selects("visual.ln_pre.weight"));
        assert!(!s.selects("token_embedding.weight"));
        let all = Selection::new(&[], &[]).expect("compiles");
        assert!(all.selects("anything"));
        let names = ["visual.a", "visual.b"];
        let typo = Selection::new(&["^visaul".into()], &[]).expect("compiles");
        let err = typo
            .check_all_match(names.iter().copied(), "w0.safetensors")
            .expect_err("typo");
        assert!(err.to_string().contains("visaul"), "{err}");
    }
}
