//! Checkpoint namings and their conversion to and from the canonical one.
//!
//! Canonical naming = OpenAI/open_clip (`visual.transformer.resblocks.0.attn.in_proj_weight`),
//! plus `classification_head.{weight,bias}` for classifiers. The model's tensors use the
//! PyTorch layout, so OpenAI and model-soups checkpoints map 1:1; only HF needs reshaping.

use std::fmt;

use crate::error::{ModelError, Result};
use crate::state::{HostTensor, StateDict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Naming {
    /// OpenAI CLIP / open_clip: `visual.conv1.weight`, `token_embedding.weight`, …
    OpenAi,
    /// HF transformers `CLIPModel`: `vision_model.encoder.layers.0.self_attn.q_proj.weight`, …
    Hf,
    /// model-soups / WiSE-FT `ImageClassifier`: `model.` + OpenAI names, plus
    /// `classification_head.{weight,bias}`.
    ModelSoups,
}

impl fmt::Display for Naming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Naming::OpenAi => "openai",
            Naming::Hf => "hf",
            Naming::ModelSoups => "model-soups",
        })
    }
}

impl Naming {
    pub fn parse(s: &str) -> Option<Naming> {
        match s.to_ascii_lowercase().as_str() {
            "openai" | "open_clip" | "open-clip" | "openclip" => Some(Naming::OpenAi),
            "hf" | "huggingface" | "transformers" => Some(Naming::Hf),
            "model-soups" | "model_soups" | "modelsoups" | "soups" => Some(Naming::ModelSoups),
            _ => None,
        }
    }

    /// Guesses the naming from the keys; `None` when no CLIP vision tower is recognisable.
    pub fn detect(state: &StateDict) -> Option<Naming> {
        let mut hf = false;
        let mut soups = false;
        let mut openai = false;
        for k in state.names() {
            hf |= k.starts_with("vision_model.");
            soups |= k.starts_with("model.visual.");
            openai |= k.starts_with("visual.");
        }
        match (hf, soups, openai) {
            (true, _, _) => Some(Naming::Hf),
            (_, true, _) => Some(Naming::ModelSoups),
            (_, _, true) => Some(Naming::OpenAi),
            _ => None,
        }
    }
}

/// The group rule for merging HF checkpoints (a `clipstock_merge::GroupRule` pattern). HF
/// attention stores q, k and v as three tensors where OpenAI/open_clip store one fused
/// `in_proj_weight` / `in_proj_bias`, and Model Stock computes the ratio over the fused tensor;
/// so `….self_attn.{q,k,v}_proj.weight` form the group `….self_attn.*_proj.weight` (the biases
/// theirs), whose summed Gram is exactly the fused tensor's and whose shared ratio therefore
/// does not depend on the naming.
pub const HF_QKV_GROUP: &str = r"^(?:.*\.)?self_attn\.(?P<member>[qkv])_proj\.(?:weight|bias)$";

/// Whether tensor `names` store q/k/v separately, HF's way (so a merge needs [`HF_QKV_GROUP`]).
pub fn has_split_qkv<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    names.into_iter().any(|n| n.contains("self_attn.q_proj."))
}

/// Wrapper prefixes that training frameworks put in front of a state dict.
const WRAPPER_PREFIXES: &[&str] = &["state_dict.", "module.", "_orig_mod."];

/// Buffers some exporters save that are not parameters; dropped silently because they are
/// recomputed (HF's position ids) or constant (open_clip's causal mask).
fn is_ignorable_buffer(name: &str) -> bool {
    name.ends_with("position_ids") || name.ends_with("attn_mask")
}

/// Strips wrapper prefixes (`module.`, `state_dict.`) present on every key.
pub fn strip_wrappers(mut state: StateDict) -> StateDict {
    loop {
        let Some(prefix) = WRAPPER_PREFIXES
            .iter()
            .find(|p| !state.is_empty() && state.names().all(|k| k.starts_with(*p)))
        else {
            return state;
        };
        state = state.rename(|k| k.strip_prefix(prefix).map(str::to_string));
    }
}

/// Converts a checkpoint to canonical naming. Returns the naming it was detected in.
pub fn to_canonical(state: StateDict, context: &str) -> Result<(StateDict, Naming)> {
    let state = strip_wrappers(state);
    let naming = Naming::detect(&state).ok_or_else(|| ModelError::NotClip {
        path: context.into(),
        reason: format!(
            "no CLIP vision tower found (expected keys starting with `visual.`, `model.visual.` \
             or `vision_model.`; first keys: {})",
            state.names().take(3).collect::<Vec<_>>().join(", ")
        ),
    })?;
    let state = state.rename(|k| (!is_ignorable_buffer(k)).then(|| k.to_string()));
    let out = match naming {
        Naming::OpenAi => state,
        Naming::ModelSoups => state.rename(|k| {
            Some(match k.strip_prefix("model.") {
                Some(rest) => rest.to_string(),
                None => k.to_string(),
            })
        }),
        Naming::Hf => hf_to_canonical(state, context)?,
    };
    Ok((out, naming))
}

/// Converts a canonical state dict to `naming`.
pub fn from_canonical(state: &StateDict, naming: Naming) -> Result<StateDict> {
    Ok(match naming {
        Naming::OpenAi => state.clone(),
        Naming::ModelSoups => state.clone().rename(|k| {
            Some(if k.starts_with("classification_head.") {
                k.to_string()
            } else {
                format!("model.{k}")
            })
        }),
        Naming::Hf => canonical_to_hf(state)?,
    })
}

/// Simple HF ↔ OpenAI renames inside one residual block (suffix after the block prefix).
const BLOCK_RENAMES: &[(&str, &str)] = &[
    ("self_attn.out_proj.weight", "attn.out_proj.weight"),
    ("self_attn.out_proj.bias", "attn.out_proj.bias"),
    ("layer_norm1.weight", "ln_1.weight"),
    ("layer_norm1.bias", "ln_1.bias"),
    ("layer_norm2.weight", "ln_2.weight"),
    ("layer_norm2.bias", "ln_2.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"),
    ("mlp.fc1.bias", "mlp.c_fc.bias"),
    ("mlp.fc2.weight", "mlp.c_proj.weight"),
    ("mlp.fc2.bias", "mlp.c_proj.bias"),
];

/// Whole-key HF ↔ OpenAI renames outside the blocks. `pre_layrnorm` is HF's spelling.
const TOP_RENAMES: &[(&str, &str)] = &[
    (
        "vision_model.embeddings.patch_embedding.weight",
        "visual.conv1.weight",
    ),
    (
        "vision_model.embeddings.class_embedding",
        "visual.class_embedding",
    ),
    (
        "vision_model.embeddings.position_embedding.weight",
        "visual.positional_embedding",
    ),
    ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
    ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
    (
        "vision_model.post_layernorm.weight",
        "visual.ln_post.weight",
    ),
    ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
    (
        "text_model.embeddings.token_embedding.weight",
        "token_embedding.weight",
    ),
    (
        "text_model.embeddings.position_embedding.weight",
        "positional_embedding",
    ),
    ("text_model.final_layer_norm.weight", "ln_final.weight"),
    ("text_model.final_layer_norm.bias", "ln_final.bias"),
    ("logit_scale", "logit_scale"),
    ("classification_head.weight", "classification_head.weight"),
    ("classification_head.bias", "classification_head.bias"),
];

/// HF stores the projections as `nn.Linear` weights ([embed, width]); OpenAI as matrices used
/// as `x @ proj` ([width, embed]).
const PROJECTIONS: &[(&str, &str)] = &[
    ("visual_projection.weight", "visual.proj"),
    ("text_projection.weight", "text_projection"),
];

const TOWERS: &[(&str, &str)] = &[
    (
        "vision_model.encoder.layers.",
        "visual.transformer.resblocks.",
    ),
    ("text_model.encoder.layers.", "transformer.resblocks."),
];

fn transpose(t: &HostTensor) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut data = vec![0.0; t.data.len()];
    for i in 0..r {
        for j in 0..c {
            data[j * r + i] = t.data[i * c + j];
        }
    }
    HostTensor::new(vec![c, r], t.dtype, data)
}

fn hf_to_canonical(mut state: StateDict, context: &str) -> Result<StateDict> {
    let mut out = StateDict::new();
    let invalid = |reason: String| ModelError::Invalid {
        context: context.to_string(),
        reason,
    };
    let names: Vec<String> = state.names().map(str::to_string).collect();
    for name in names {
        let Some(t) = state.remove(&name) else {
            continue;
        };
        if let Some((_, canon)) = TOP_RENAMES.iter().find(|(hf, _)| *hf == name) {
            out.insert(*canon, t);
            continue;
        }
        if let Some((_, canon)) = PROJECTIONS.iter().find(|(hf, _)| *hf == name) {
            if t.shape.len() != 2 {
                return Err(invalid(format!(
                    "`{name}` has shape {:?}, expected [embed, width]",
                    t.shape
                )));
            }
            out.insert(*canon, transpose(&t));
            continue;
        }
        let Some((hf_prefix, canon_prefix)) = TOWERS.iter().find(|(p, _)| name.starts_with(p))
        else {
            // Unknown keys are kept so the loader can report them as unexpected.
            out.insert(name, t);
            continue;
        };
        let rest = &name[hf_prefix.len()..];
        let Some((index, suffix)) = rest.split_once('.') else {
            out.insert(name, t);
            continue;
        };
        if let Some((_, canon)) = BLOCK_RENAMES.iter().find(|(hf, _)| *hf == suffix) {
            out.insert(format!("{canon_prefix}{index}.{canon}"), t);
            continue;
        }
        // q/k/v: fuse into OpenAI's `in_proj_*` at whichever of the three comes first,
        // taking the other two out of the remaining state.
        let qkv = suffix
            .strip_prefix("self_attn.")
            .and_then(|s| s.split_once('.'))
            .filter(|(p, k)| {
                matches!(*p, "q_proj" | "k_proj" | "v_proj") && matches!(*k, "weight" | "bias")
            });
        let Some((which, kind)) = qkv else {
            out.insert(name, t);
            continue;
        };
        let base = format!("{hf_prefix}{index}.self_attn");
        let shape_hint = t.shape.clone();
        let mut parts = Vec::with_capacity(3);
        let mut current = Some(t);
        for p in ["q_proj", "k_proj", "v_proj"] {
            let part = if p == which {
                current.take()
            } else {
                state.remove(&format!("{base}.{p}.{kind}"))
            };
            let Some(part) = part else {
                return Err(ModelError::MissingTensor {
                    context: context.to_string(),
                    name: format!("{base}.{p}.{kind}"),
                    expected: shape_hint,
                });
            };
            parts.push(part);
        }
        if parts[1].shape != parts[0].shape || parts[2].shape != parts[0].shape {
            return Err(invalid(format!(
                "{base}: q/k/v {kind} shapes differ: {:?} {:?} {:?}",
                parts[0].shape, parts[1].shape, parts[2].shape
            )));
        }
        let mut shape = parts[0].shape.clone();
        shape[0] *= 3;
        let dtype = parts[0].dtype;
        let data: Vec<f32> = parts.into_iter().flat_map(|p| p.data).collect();
        out.insert(
            format!("{canon_prefix}{index}.attn.in_proj_{kind}"),
            HostTensor::new(shape, dtype, data),
        );
    }
    Ok(out)
}

fn canonical_to_hf(state: &StateDict) -> Result<StateDict> {
    let mut out = StateDict::new();
    for (name, t) in state.iter() {
        if let Some((hf, _)) = TOP_RENAMES.iter().find(|(_, c)| *c == name) {
            out.insert(*hf, t.clone());
            continue;
        }
        if let Some((hf, _)) = PROJECTIONS.iter().find(|(_, c)| *c == name) {
            out.insert(*hf, transpose(t));
            continue;
        }
        let Some((hf_prefix, canon_prefix)) = TOWERS.iter().find(|(_, c)| name.starts_with(c))
        else {
            return Err(ModelError::Invalid {
                context: "export to HF naming".into(),
                reason: format!("no HF name for tensor `{name}`"),
            });
        };
        let rest = &name[canon_prefix.len()..];
        let (index, suffix) = rest.split_once('.').unwrap_or((rest, ""));
        if let Some((hf, _)) = BLOCK_RENAMES.iter().find(|(_, c)| *c == suffix) {
            out.insert(format!("{hf_prefix}{index}.{hf}"), t.clone());
            continue;
        }
        let kind = match suffix {
            "attn.in_proj_weight" => "weight",
            "attn.in_proj_bias" => "bias",
            _ => {
                return Err(ModelError::Invalid {
                    context: "export to HF naming".into(),
                    reason: format!("no HF name for tensor `{name}`"),
                });
            }
        };
        let part = t.data.len() / 3;
        let mut shape = t.shape.clone();
        shape[0] /= 3;
        for (i, q) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            out.insert(
                format!("{hf_prefix}{index}.self_attn.{q}.{kind}"),
                HostTensor::new(
                    shape.clone(),
                    t.dtype,
                    t.data[i * part..(i + 1) * part].to_vec(),
                ),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ClipArch;
    use crate::state::DType;

    fn random_canonical() -> StateDict {
        let arch = ClipArch {
            embed_dim: 8,
            vision: crate::arch::VisionArch {
                width: 6,
                layers: 2,
                mlp_width: 12,
                ..ClipArch::tiny().vision
            },
            text: Some(crate::arch::TextArch {
                context_length: 5,
                vocab_size: 11,
                width: 4,
                layers: 1,
                heads: 1,
                mlp_width: 8,
            }),
        };
        let mut sd = StateDict::new();
        let mut x = 0.0f32;
        for (name, shape) in arch.expected_shapes() {
            let n = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    x += 0.37;
                    x.sin()
                })
                .collect();
            sd.insert(name, HostTensor::new(shape, DType::F32, data));
        }
        sd
    }

    #[test]
    fn hf_round_trip_is_exact() {
        let canon = random_canonical();
        let hf = from_canonical(&canon, Naming::Hf).expect("to hf");
        assert!(hf.contains("vision_model.encoder.layers.1.self_attn.v_proj.bias"));
        assert_eq!(
            hf.get("visual_projection.weight").map(|t| t.shape.clone()),
            Some(vec![8, 6])
        );
        let (back, naming) = to_canonical(hf, "test").expect("from hf");
        assert_eq!(naming, Naming::Hf);
        for (name, t) in canon.iter() {
            assert_eq!(back.get(name), Some(t), "{name}");
        }
        assert_eq!(back.len(), canon.len());
    }

    #[test]
    fn soups_and_wrappers() {
        let canon = random_canonical();
        let soups = from_canonical(&canon, Naming::ModelSoups).expect("soups");
        assert!(soups.contains("model.visual.proj"));
        let wrapped = soups.rename(|k| Some(format!("module.{k}")));
        let (back, naming) = to_canonical(wrapped, "test").expect("canon");
        assert_eq!(naming, Naming::ModelSoups);
        assert_eq!(back, canon);
    }

    #[test]
    fn hf_qkv_rule_groups_each_layers_qkv_and_nothing_else() {
        let canon = random_canonical();
        let hf = from_canonical(&canon, Naming::Hf).expect("to hf");
        let rule = clipstock_merge::GroupRule::new(HF_QKV_GROUP).expect("the rule compiles");
        let groups = clipstock_merge::group_tensors(hf.names(), std::slice::from_ref(&rule));
        // Two vision layers and one text layer, weights and biases: six groups of three.
        assert_eq!(groups.len(), 6, "{:?}", groups.keys());
        for (key, members) in &groups {
            assert!(key.contains(".self_attn.*_proj."), "{key}");
            let mut want: Vec<String> = ["k", "q", "v"]
                .iter()
                .map(|m| key.replacen('*', m, 1))
                .collect();
            let mut got = members.clone();
            want.sort();
            got.sort();
            assert_eq!(got, want, "one layer's q/k/v of one kind, together");
        }
        let grouped: usize = groups.values().map(Vec::len).sum();
        let qkv = hf
            .names()
            .filter(|n| {
                [".q_proj.", ".k_proj.", ".v_proj."]
                    .iter()
                    .any(|p| n.contains(p))
            })
            .count();
        assert_eq!((grouped, qkv), (18, 18), "nothing else is grouped");
        assert!(clipstock_merge::group_tensors(canon.names(), &[rule]).is_empty());
        assert!(has_split_qkv(hf.names()));
        assert!(!has_split_qkv(canon.names()));
    }

    #[test]
    fn not_clip_is_reported() {
        let mut sd = StateDict::new();
        sd.insert("fc.weight", HostTensor::new(vec![1], DType::F32, vec![0.0]));
        let err = to_canonical(sd, "x.pt").expect_err("not clip").to_string();
        assert!(err.contains("x.pt") && err.contains("fc.weight"), "{err}");
    }
}
