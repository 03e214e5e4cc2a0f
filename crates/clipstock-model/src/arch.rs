//! CLIP architecture descriptions: presets, inference from a checkpoint's shapes, and the
//! key/shape table a checkpoint in canonical (OpenAI) naming must match.

use clipstock_config::ArchPreset;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::state::StateDict;
use crate::tokenizer::{MIN_CONTEXT_LENGTH, VOCAB_SIZE};

/// OpenAI's loader derives the head count from the width with a fixed head size of 64; we do the
/// same so that any OpenAI-style checkpoint loads without a preset.
pub const HEAD_WIDTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisionArch {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_width: usize,
}

impl VisionArch {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patch tokens plus the class token.
    pub fn seq_len(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextArch {
    pub context_length: usize,
    pub vocab_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_width: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipArch {
    pub embed_dim: usize,
    pub vision: VisionArch,
    /// `None` for image-only checkpoints (e.g. a fine-tuned classifier saved without its text
    /// tower): they can be fine-tuned and evaluated with a stored head, not used zero-shot.
    pub text: Option<TextArch>,
}

fn vision(image_size: usize, patch_size: usize, width: usize, layers: usize) -> VisionArch {
    VisionArch {
        image_size,
        patch_size,
        width,
        layers,
        heads: width / HEAD_WIDTH,
        mlp_width: width * 4,
    }
}

fn text(width: usize, layers: usize) -> TextArch {
    TextArch {
        context_length: 77,
        vocab_size: VOCAB_SIZE,
        width,
        layers,
        heads: width / HEAD_WIDTH,
        mlp_width: width * 4,
    }
}

/// The sizes of a `model.arch` preset (OpenAI's released models).
impl From<ArchPreset> for ClipArch {
    fn from(preset: ArchPreset) -> ClipArch {
        match preset {
            ArchPreset::VitB32 => ClipArch {
                embed_dim: 512,
                vision: vision(224, 32, 768, 12),
                text: Some(text(512, 12)),
            },
            ArchPreset::VitB16 => ClipArch {
                embed_dim: 512,
                vision: vision(224, 16, 768, 12),
                text: Some(text(512, 12)),
            },
            ArchPreset::VitL14 => ClipArch {
                embed_dim: 768,
                vision: vision(224, 14, 1024, 24),
                text: Some(text(768, 12)),
            },
        }
    }
}

impl ClipArch {
    /// A one-block image-only model small enough to train in milliseconds on a CPU (8×8 images
    /// in 4×4 patches, width 64, one head, an 8-d embedding): what the crates' tests build, and
    /// the base the others vary.
    pub fn tiny() -> ClipArch {
        ClipArch {
            embed_dim: 8,
            vision: VisionArch {
                image_size: 8,
                patch_size: 4,
                width: 64,
                layers: 1,
                heads: 1,
                mlp_width: 32,
            },
            text: None,
        }
    }

    /// Presets by open_clip name (`ViT-B-32`) or OpenAI name (`ViT-B/32`).
    pub fn preset(name: &str) -> Option<ClipArch> {
        let key: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        let preset = match key.as_str() {
            "vitb32" => ArchPreset::VitB32,
            "vitb16" => ArchPreset::VitB16,
            "vitl14" => ArchPreset::VitL14,
            _ => return None,
        };
        Some(preset.into())
    }

    pub fn preset_names() -> &'static [&'static str] {
        &clipstock_config::ARCHS
    }

    /// Infers the architecture from tensor shapes in canonical naming, following OpenAI's
    /// `build_model`: widths from LayerNorm/conv shapes, depth from the highest block index,
    /// heads = width / 64, image size = patch × grid from the positional embedding.
    pub fn infer(state: &StateDict, context: &str) -> Result<ClipArch> {
        let shape = |name: &str| -> Result<Vec<usize>> {
            state
                .get(name)
                .map(|t| t.shape.clone())
                .ok_or_else(|| ModelError::NotClip {
                    path: context.into(),
                    reason: format!("no `{name}` tensor"),
                })
        };
        let bad = |reason: String| ModelError::Invalid {
            context: context.to_string(),
            reason,
        };

        // Each size is read from every tensor that carries it and the most common value wins:
        // one mis-shaped tensor then disagrees with the inferred architecture and validation
        // names that tensor, not a correct one that merely disagrees with it.
        let dim =
            |name: &str, axis: usize| state.get(name).and_then(|t| t.shape.get(axis).copied());
        let vote = |candidates: &[(&str, usize)]| -> Option<usize> {
            let values: Vec<usize> = candidates.iter().filter_map(|(n, a)| dim(n, *a)).collect();
            // Ties go to the first value listed, the tensor that defines the size.
            let mut best: Option<(usize, usize)> = None;
            for &v in &values {
                let count = values.iter().filter(|&&x| x == v).count();
                if best.is_none_or(|(_, c)| count > c) {
                    best = Some((v, count));
                }
            }
            best.map(|(v, _)| v)
        };

        let conv = shape("visual.conv1.weight")?;
        if conv.len() != 4 || conv[1] != 3 || conv[2] != conv[3] || conv[2] == 0 {
            return Err(bad(format!(
                "`visual.conv1.weight` has shape {conv:?}, expected [width, 3, patch, patch]"
            )));
        }
        let patch = conv[2];
        let v_pos = shape("visual.positional_embedding")?;
        if v_pos.len() != 2 || v_pos[0] < 2 {
            return Err(bad(format!(
                "`visual.positional_embedding` has shape {v_pos:?}, expected [grid*grid+1, width]"
            )));
        }
        let grid = ((v_pos[0] - 1) as f64).sqrt().round() as usize;
        if grid * grid + 1 != v_pos[0] {
            return Err(bad(format!(
                "`visual.positional_embedding` has {} rows, not a square grid plus a class token",
                v_pos[0]
            )));
        }
        let v_layers = count_blocks(state, "visual.transformer.resblocks.");
        if v_layers == 0 {
            return Err(bad("no `visual.transformer.resblocks.*` tensors".into()));
        }
        let proj = shape("visual.proj")?;
        if proj.len() != 2 {
            return Err(bad(format!(
                "`visual.proj` has shape {proj:?}, expected 2 dims"
            )));
        }
        let v_width = vote(&[
            ("visual.class_embedding", 0),
            ("visual.ln_pre.weight", 0),
            ("visual.ln_pre.bias", 0),
            ("visual.conv1.weight", 0),
            ("visual.positional_embedding", 1),
            ("visual.proj", 0),
            ("visual.ln_post.weight", 0),
            ("visual.ln_post.bias", 0),
        ])
        .unwrap_or(conv[0]);
        let v_mlp =
            mlp_width("visual.transformer.resblocks.", v_layers, &vote).ok_or_else(|| {
                ModelError::NotClip {
                    path: context.into(),
                    reason: "no `visual.transformer.resblocks.0.mlp.c_fc.weight` tensor".into(),
                }
            })?;
        let vision = VisionArch {
            image_size: grid * patch,
            patch_size: patch,
            width: v_width,
            layers: v_layers,
            heads: (v_width / HEAD_WIDTH).max(1),
            mlp_width: v_mlp,
        };

        // model-soups' wrapper deletes the text transformer but keeps the embeddings,
        // `ln_final` and `text_projection`: without blocks there is no usable text tower.
        let has_text_blocks = count_blocks(state, "transformer.resblocks.") > 0;
        let text = if has_text_blocks {
            let tok = shape("token_embedding.weight")?;
            let pos = shape("positional_embedding")?;
            if tok.len() != 2 || pos.len() != 2 {
                return Err(bad(format!(
                    "text embeddings have shapes {tok:?} and {pos:?}, expected 2 dims each"
                )));
            }
            let width = vote(&[
                ("ln_final.weight", 0),
                ("ln_final.bias", 0),
                ("token_embedding.weight", 1),
                ("positional_embedding", 1),
                ("text_projection", 0),
            ])
            .unwrap_or(tok[1]);
            let layers = count_blocks(state, "transformer.resblocks.");
            let mlp = mlp_width("transformer.resblocks.", layers, &vote).ok_or_else(|| {
                ModelError::NotClip {
                    path: context.into(),
                    reason: "no `transformer.resblocks.0.mlp.c_fc.weight` tensor".into(),
                }
            })?;
            Some(TextArch {
                context_length: pos[0],
                // Not read from the file: the tokenizer is fixed, so a token embedding of any
                // other size is an error (validation names it) rather than another model.
                vocab_size: VOCAB_SIZE,
                width,
                layers,
                heads: (width / HEAD_WIDTH).max(1),
                mlp_width: mlp,
            })
        } else {
            None
        };
        let embed_dim = vote(&[("visual.proj", 1), ("text_projection", 1)]).unwrap_or(proj[1]);
        let arch = ClipArch {
            embed_dim,
            vision,
            text,
        };
        arch.check(context)?;
        Ok(arch)
    }

    /// The sizes a model needs to agree among themselves before any module is built (tensor
    /// shapes are checked against [`ClipArch::expected_shapes`] separately): attention heads
    /// that divide the width, no empty dimension, and a text tower the tokenizer can feed.
    pub fn check(&self, context: &str) -> Result<()> {
        let bad = |reason: String| {
            Err(ModelError::Invalid {
                context: context.to_string(),
                reason,
            })
        };
        let v = &self.vision;
        if self.embed_dim == 0 || v.width == 0 || v.mlp_width == 0 || v.patch_size == 0 {
            return bad(format!(
                "empty dimension: embed {}, vision width {}, mlp {}, patch {}",
                self.embed_dim, v.width, v.mlp_width, v.patch_size
            ));
        }
        if v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "image size {} is not a positive multiple of the patch size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.heads == 0 || !v.width.is_multiple_of(v.heads) {
            return bad(format!(
                "vision width {} does not split into {} attention heads",
                v.width, v.heads
            ));
        }
        if let Some(t) = &self.text {
            if t.width == 0 || t.mlp_width == 0 || t.layers == 0 {
                return bad(format!(
                    "empty text dimension: width {}, mlp {}, layers {}",
                    t.width, t.mlp_width, t.layers
                ));
            }
            if t.heads == 0 || !t.width.is_multiple_of(t.heads) {
                return bad(format!(
                    "text width {} does not split into {} attention heads",
                    t.width, t.heads
                ));
            }
            if t.context_length < MIN_CONTEXT_LENGTH {
                return bad(format!(
                    "`positional_embedding` has {} rows: the text context must hold at least \
                     {MIN_CONTEXT_LENGTH} tokens (start, one word, end)",
                    t.context_length
                ));
            }
        }
        Ok(())
    }

    /// Every tensor of the model in canonical naming with its shape, in the order open_clip's
    /// `state_dict()` lists them (vision tower first, as `visual.*` is registered first).
    pub fn expected_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let v = &self.vision;
        let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));
        push("visual.class_embedding".into(), vec![v.width]);
        push(
            "visual.positional_embedding".into(),
            vec![v.seq_len(), v.width],
        );
        push("visual.proj".into(), vec![v.width, self.embed_dim]);
        push(
            "visual.conv1.weight".into(),
            vec![v.width, 3, v.patch_size, v.patch_size],
        );
        push("visual.ln_pre.weight".into(), vec![v.width]);
        push("visual.ln_pre.bias".into(), vec![v.width]);
        for i in 0..v.layers {
            block_shapes(
                &format!("visual.transformer.resblocks.{i}"),
                v.width,
                v.mlp_width,
                &mut push,
            );
        }
        push("visual.ln_post.weight".into(), vec![v.width]);
        push("visual.ln_post.bias".into(), vec![v.width]);
        if let Some(t) = &self.text {
            push(
                "positional_embedding".into(),
                vec![t.context_length, t.width],
            );
            push("text_projection".into(), vec![t.width, self.embed_dim]);
            push("logit_scale".into(), vec![]);
            push("token_embedding.weight".into(), vec![t.vocab_size, t.width]);
            for i in 0..t.layers {
                block_shapes(
                    &format!("transformer.resblocks.{i}"),
                    t.width,
                    t.mlp_width,
                    &mut push,
                );
            }
            push("ln_final.weight".into(), vec![t.width]);
            push("ln_final.bias".into(), vec![t.width]);
        } else {
            // Kept for image-only checkpoints too, so every export has the same scalar.
            push("logit_scale".into(), vec![]);
        }
        out
    }

    /// Text-tower tensors an image-only checkpoint may still carry (model-soups keeps them):
    /// not part of the model, carried through exports unchanged.
    pub fn text_leftovers(&self) -> &'static [&'static str] {
        if self.text.is_some() {
            &[]
        } else {
            TEXT_LEFTOVERS
        }
    }

    pub fn num_params(&self) -> usize {
        self.expected_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

const TEXT_LEFTOVERS: &[&str] = &[
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "ln_final.bias",
    "text_projection",
];

fn block_shapes(prefix: &str, width: usize, mlp: usize, push: &mut impl FnMut(String, Vec<usize>)) {
    push(format!("{prefix}.ln_1.weight"), vec![width]);
    push(format!("{prefix}.ln_1.bias"), vec![width]);
    push(
        format!("{prefix}.attn.in_proj_weight"),
        vec![3 * width, width],
    );
    push(format!("{prefix}.attn.in_proj_bias"), vec![3 * width]);
    push(format!("{prefix}.attn.out_proj.weight"), vec![width, width]);
    push(format!("{prefix}.attn.out_proj.bias"), vec![width]);
    push(format!("{prefix}.ln_2.weight"), vec![width]);
    push(format!("{prefix}.ln_2.bias"), vec![width]);
    push(format!("{prefix}.mlp.c_fc.weight"), vec![mlp, width]);
    push(format!("{prefix}.mlp.c_fc.bias"), vec![mlp]);
    push(format!("{prefix}.mlp.c_proj.weight"), vec![width, mlp]);
    push(format!("{prefix}.mlp.c_proj.bias"), vec![width]);
}

/// The MLP width all blocks under `prefix` agree on most (see `vote` in [`ClipArch::infer`]).
fn mlp_width(
    prefix: &str,
    layers: usize,
    vote: &impl Fn(&[(&str, usize)]) -> Option<usize>,
) -> Option<usize> {
    let names: Vec<(String, usize)> = (0..layers)
        .flat_map(|i| {
            [
                (format!("{prefix}{i}.mlp.c_fc.weight"), 0),
                (format!("{prefix}{i}.mlp.c_fc.bias"), 0),
                (format!("{prefix}{i}.mlp.c_proj.weight"), 1),
            ]
        })
        .collect();
    let refs: Vec<(&str, usize)> = names.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    vote(&refs)
}

/// Number of residual blocks under `prefix` (`prefix{i}.…`), i.e. the highest index plus one.
fn count_blocks(state: &StateDict, prefix: &str) -> usize {
    state
        .names()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{DType, HostTensor};

    #[test]
    fn presets_have_openai_parameter_counts() {
        // OpenAI's published totals (image + text towers, logit_scale included).
        let b32 = ClipArch::preset("ViT-B/32").map(|a| a.num_params());
        assert_eq!(b32, Some(151_277_313));
        let b16 = ClipArch::preset("ViT-B-16").map(|a| a.num_params());
        assert_eq!(b16, Some(149_620_737));
        let l14 = ClipArch::preset("vit_l_14").map(|a| a.num_params());
        assert_eq!(l14, Some(427_616_513));
        assert!(ClipArch::preset("ViT-H-14").is_none());
    }

    #[test]
    fn every_config_preset_has_sizes() {
        for p in ArchPreset::ALL {
            assert_eq!(ClipArch::preset(p.name()), Some(ClipArch::from(p)), "{p}");
        }
    }

    #[test]
    fn inference_recovers_presets_from_shapes() {
        for name in ClipArch::preset_names() {
            let arch = ClipArch::preset(name).expect("preset");
            let state = StateDict::zeros_like_shapes(&arch.expected_shapes());
            let inferred = ClipArch::infer(&state, "test").expect("infer");
            assert_eq!(inferred, arch, "{name}");
        }
    }

    /// `tiny()` with a small text tower on the real tokenizer's vocabulary.
    fn tiny_with_text() -> ClipArch {
        ClipArch {
            text: Some(TextArch {
                context_length: 5,
                vocab_size: VOCAB_SIZE,
                width: 8,
                layers: 1,
                heads: 1,
                mlp_width: 16,
            }),
            ..ClipArch::tiny()
        }
    }

    fn validate_error(state: &StateDict) -> String {
        match ClipArch::infer(state, "t") {
            Err(e) => e.to_string(),
            Ok(arch) => crate::load::validate(state, &arch, "t", true)
                .map(|()| String::from("valid"))
                .unwrap_or_else(|e| e.to_string()),
        }
    }

    #[test]
    fn token_embedding_one_row_short_is_named() {
        let arch = tiny_with_text();
        let mut state = StateDict::zeros_like_shapes(&arch.expected_shapes());
        assert_eq!(validate_error(&state), "valid");
        state.insert(
            "token_embedding.weight",
            HostTensor::new(
                vec![VOCAB_SIZE - 1, 8],
                DType::F32,
                vec![0.0; (VOCAB_SIZE - 1) * 8],
            ),
        );
        let err = validate_error(&state);
        assert!(err.contains("`token_embedding.weight`"), "{err}");
        assert!(
            err.contains("[49407, 8]") && err.contains("[49408, 8]"),
            "{err}"
        );
    }

    #[test]
    fn context_shorter_than_the_tokenizer_needs_is_refused() {
        let mut arch = tiny_with_text();
        if let Some(t) = arch.text.as_mut() {
            t.context_length = 2;
        }
        let state = StateDict::zeros_like_shapes(&arch.expected_shapes());
        let err = validate_error(&state);
        assert!(err.contains("`positional_embedding` has 2 rows"), "{err}");
    }

    #[test]
    fn heads_must_divide_the_width() {
        let mut arch = ClipArch::tiny();
        arch.vision.width = 130;
        arch.vision.heads = 4;
        let err = arch.check("t").expect_err("130 / 4").to_string();
        assert!(
            err.contains("does not split into 4 attention heads"),
            "{err}"
        );
        assert!(ClipArch::tiny().check("t").is_ok());
    }

    /// One wrong tensor is named, not a correct one it disagrees with.
    #[test]
    fn the_mis_shaped_tensor_is_named() {
        let cases = [
            ("visual.conv1.weight", vec![65, 3, 4, 4]),
            ("visual.class_embedding", vec![65]),
            ("visual.ln_pre.weight", vec![63]),
            (
                "visual.transformer.resblocks.0.mlp.c_fc.weight",
                vec![31, 64],
            ),
            ("ln_final.weight", vec![7]),
            ("text_projection", vec![9, 8]),
        ];
        for (name, shape) in cases {
            let arch = tiny_with_text();
            let mut state = StateDict::zeros_like_shapes(&arch.expected_shapes());
            let n = shape.iter().product();
            state.insert(name, HostTensor::new(shape, DType::F32, vec![0.0; n]));
            let err = validate_error(&state);
            assert!(err.contains(&format!("`{name}`")), "{name}: {err}");
        }
    }

    #[test]
    fn inference_without_text_tower() {
        let mut arch = ClipArch::preset("ViT-B-32").expect("preset");
        arch.text = None;
        let state = StateDict::zeros_like_shapes(&arch.expected_shapes());
        assert_eq!(ClipArch::infer(&state, "t").expect("infer"), arch);
    }
}
