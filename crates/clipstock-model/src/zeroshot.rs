//! The zero-shot classification head: class names × prompt templates through the text tower.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::load::{Checkpoint, head_state};
use crate::model::{ClipModel, l2_normalize};
use crate::state::StateDict;
use crate::tokenizer::ClipTokenizer;

/// OpenAI's zero-shot logit scale for the head: weights are 100 × the unit class embeddings.
pub const HEAD_SCALE: f32 = 100.0;

/// Reads a JSON array of strings (class names or templates), naming the file on error.
pub fn read_string_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let list: Vec<String> = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        reason: format!("expected a JSON array of strings: {e}"),
    })?;
    if list.is_empty() {
        return Err(ModelError::Json {
            path: path.to_path_buf(),
            reason: "the list is empty".into(),
        });
    }
    Ok(list)
}

/// Reads a JSON array of prompt templates, each with a `{}` for the class name (a template
/// without one would give every class the same prompt, silently).
pub fn read_templates(path: &Path) -> Result<Vec<String>> {
    let templates = read_string_list(path)?;
    if let Some(bad) = templates.iter().find(|t| !t.contains("{}")) {
        return Err(ModelError::Json {
            path: path.to_path_buf(),
            reason: format!("template {bad:?} has no `{{}}` placeholder for the class name"),
        });
    }
    Ok(templates)
}

/// Fills a template's `{}` with the class name, as Python's `template.format(name)` does for the
/// OpenAI templates (each has exactly one `{}`).
pub fn fill_template(template: &str, classname: &str) -> String {
    template.replacen("{}", classname, 1)
}

/// Builds the `[classes, embed]` head weight: for each class, encode every filled template,
/// L2-normalise each embedding, average, L2-normalise again, scale by 100. `progress` is called
/// with the number of classes done after each batch; returning `Break` stops with
/// [`ModelError::Cancelled`] (80,000 prompts take minutes, and a Ctrl-C should not wait).
pub fn zeroshot_weights(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    classnames: &[String],
    templates: &[String],
    classes_per_batch: usize,
    device: &Device,
    mut progress: impl FnMut(usize) -> ControlFlow<()>,
) -> Result<Vec<f32>> {
    let Some(text) = model.text.as_ref() else {
        return Err(ModelError::Invalid {
            context: "zero-shot head".into(),
            reason: "the checkpoint has no text tower".into(),
        });
    };
    let ctx = tokenizer.context_length();
    let t = templates.len();
    let mut weights = Vec::new();
    let mut done = 0;
    for chunk in classnames.chunks(classes_per_batch.max(1)) {
        let prompts: Vec<String> = chunk
            .iter()
            .flat_map(|c| templates.iter().map(move |tpl| fill_template(tpl, c)))
            .collect();
        let ids: Vec<i64> = tokenizer
            .encode_batch(&prompts)
            .into_iter()
            .map(i64::from)
            .collect();
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [prompts.len(), ctx]), device);
        let emb = l2_normalize(text.forward(tokens));
        let [_, d] = emb.dims();
        let mean = emb
            .reshape([chunk.len(), t, d])
            .mean_dim(1)
            .reshape([chunk.len(), d]);
        let head = l2_normalize(mean) * HEAD_SCALE;
        let data = head
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| ModelError::Invalid {
                context: "zero-shot head".into(),
                reason: format!("{e:?}"),
            })?;
        weights.extend(data);
        done += chunk.len();
        if progress(done).is_break() {
            return Err(ModelError::Cancelled);
        }
    }
    Ok(weights)
}

/// The head as a state dict (`classification_head.weight` = weights, bias 0).
pub fn zeroshot_head(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    classnames: &[String],
    templates: &[String],
    classes_per_batch: usize,
    device: &Device,
    progress: impl FnMut(usize) -> ControlFlow<()>,
) -> Result<StateDict> {
    let w = zeroshot_weights(
        model,
        tokenizer,
        classnames,
        templates,
        classes_per_batch,
        device,
        progress,
    )?;
    let embed = w.len() / classnames.len().max(1);
    Ok(head_state(w, classnames.len(), embed))
}

/// The zero-shot head of a checkpoint with a text tower, from a class-name file and a template
/// file (JSON arrays), with the checkpoint's own context length. Setting `cancel` stops it
/// between batches with [`ModelError::Cancelled`].
pub fn zeroshot_head_from_files(
    ckpt: &Checkpoint,
    classnames: &Path,
    templates: &Path,
    device: &Device,
    cancel: Option<&AtomicBool>,
) -> Result<StateDict> {
    let clip = ckpt.clip(device)?;
    let ctx = ckpt
        .arch
        .text
        .as_ref()
        .map(|t| t.context_length)
        .unwrap_or(77);
    let classnames = read_string_list(classnames)?;
    let templates = read_templates(templates)?;
    zeroshot_head(
        &clip,
        &ClipTokenizer::new(ctx),
        &classnames,
        &templates,
        8,
        device,
        |_| match cancel {
            Some(c) if c.load(Ordering::SeqCst) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_without_a_placeholder_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.json");
        std::fs::write(&p, r#"["a photo of a {}.", "a photo."]"#).expect("write");
        let e = read_templates(&p).expect_err("no placeholder").to_string();
        assert!(e.contains("t.json") && e.contains("\"a photo.\""), "{e}");
        std::fs::write(&p, r#"["a photo of a {}."]"#).expect("write");
        assert_eq!(
            read_templates(&p).ok(),
            Some(vec!["a photo of a {}.".to_string()])
        );
    }
}
