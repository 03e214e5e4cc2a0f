//! From a file on disk to a validated burn module, and back.

use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::arch::ClipArch;
use crate::error::{ModelError, Result};
use crate::model::{ClipLinear, ClipModel, ImageClassifier, ParamSource};
use crate::naming::{self, Naming};
use crate::state::{DType, HostTensor, StateDict};

pub const HEAD_WEIGHT: &str = "classification_head.weight";
pub const HEAD_BIAS: &str = "classification_head.bias";

/// A checkpoint read from disk and converted to canonical naming.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub state: StateDict,
    pub naming: Naming,
    pub arch: ClipArch,
    pub context: String,
}

impl Checkpoint {
    /// Reads any supported file, detects its naming and infers the architecture.
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let context = path.display().to_string();
        let raw = StateDict::read(path)?;
        let (mut state, naming) = naming::to_canonical(raw, &context)?;
        // PyTorch's 0-dim scalar: keep it 0-dim in the canonical state.
        if let Some(t) = state.get_mut("logit_scale")
            && t.numel() == 1
        {
            t.shape.clear();
        }
        let arch = ClipArch::infer(&state, &context)?;
        Ok(Checkpoint {
            state,
            naming,
            arch,
            context,
        })
    }

    /// Tensors carried through unchanged because the model does not use them (an image-only
    /// checkpoint's text-tower leftovers).
    pub fn extras(&self) -> StateDict {
        let mut out = StateDict::new();
        for name in self.arch.text_leftovers() {
            if let Some(t) = self.state.get(name) {
                out.insert(*name, t.clone());
            }
        }
        out
    }

    pub fn has_head(&self) -> bool {
        self.state.contains(HEAD_WEIGHT)
    }

    /// Builds the CLIP model; a classification head in the file is ignored here (see
    /// [`Checkpoint::classifier`]).
    pub fn clip(&self, device: &Device) -> Result<ClipModel> {
        validate(&self.state, &self.arch, &self.context, true)?;
        let mut src = ParamSource::state(&self.state, device);
        let model = ClipModel::build(&self.arch, &mut src);
        check_missing(&src, &self.context)?;
        Ok(model)
    }

    /// Builds the classifier with the head from `head` (a file holding
    /// `classification_head.{weight,bias}`, or `weight`/`bias`), else from this checkpoint.
    pub fn classifier(&self, head: Option<&StateDict>, device: &Device) -> Result<ImageClassifier> {
        let model = self.clip(device)?;
        let (source, context) = match head {
            Some(h) => (h, "head file".to_string()),
            None => (&self.state, self.context.clone()),
        };
        let head = head_from(source, self.arch.embed_dim, &context)?;
        let mut src = ParamSource::state(&head, device);
        let classes = head.get(HEAD_BIAS).map(|t| t.numel()).unwrap_or(0);
        let classification_head = ClipLinear::new(
            self.arch.embed_dim,
            classes,
            &mut src,
            "classification_head",
        );
        check_missing(&src, &context)?;
        Ok(ImageClassifier {
            model,
            classification_head,
        })
    }
}

/// Extracts `classification_head.{weight,bias}` (or bare `weight`/`bias`) and checks shapes.
pub fn head_from(state: &StateDict, embed_dim: usize, context: &str) -> Result<StateDict> {
    let pick = |full: &str, bare: &str| state.get(full).or_else(|| state.get(bare)).cloned();
    let weight = pick(HEAD_WEIGHT, "weight").ok_or_else(|| ModelError::MissingTensor {
        context: context.to_string(),
        name: HEAD_WEIGHT.into(),
        expected: vec![0, embed_dim],
    })?;
    if weight.shape.len() != 2 || weight.shape[1] != embed_dim {
        return Err(ModelError::ShapeMismatch {
            context: context.to_string(),
            name: HEAD_WEIGHT.into(),
            expected: vec![weight.shape.first().copied().unwrap_or(0), embed_dim],
            found: weight.shape.clone(),
        });
    }
    let classes = weight.shape[0];
    let bias = pick(HEAD_BIAS, "bias").ok_or_else(|| ModelError::MissingTensor {
        context: context.to_string(),
        name: HEAD_BIAS.into(),
        expected: vec![classes],
    })?;
    if bias.shape != [classes] {
        return Err(ModelError::ShapeMismatch {
            context: context.to_string(),
            name: HEAD_BIAS.into(),
            expected: vec![classes],
            found: bias.shape.clone(),
        });
    }
    let mut out = StateDict::new();
    out.insert(HEAD_WEIGHT, weight);
    out.insert(HEAD_BIAS, bias);
    Ok(out)
}

/// Checks that `state` holds exactly the tensors of `arch` with the right shapes. With
/// `allow_head`, a classification head may be present too (it is checked by [`head_from`]).
pub fn validate(state: &StateDict, arch: &ClipArch, context: &str, allow_head: bool) -> Result<()> {
    arch.check(context)?;
    let expected = arch.expected_shapes();
    for (name, shape) in &expected {
        let Some(t) = state.get(name) else {
            return Err(ModelError::MissingTensor {
                context: context.to_string(),
                name: name.clone(),
                expected: shape.clone(),
            });
        };
        if &t.shape != shape {
            return Err(ModelError::ShapeMismatch {
                context: context.to_string(),
                name: name.clone(),
                expected: shape.clone(),
                found: t.shape.clone(),
            });
        }
    }
    let known: std::collections::HashSet<&str> = expected
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(arch.text_leftovers().iter().copied())
        .collect();
    let unexpected: Vec<&str> = state
        .names()
        .filter(|n| !known.contains(n))
        .filter(|n| !(allow_head && (*n == HEAD_WEIGHT || *n == HEAD_BIAS)))
        .collect();
    if !unexpected.is_empty() {
        let shown: Vec<&str> = unexpected.iter().take(5).copied().collect();
        let more = if unexpected.len() > 5 {
            format!(" (and {} more)", unexpected.len() - 5)
        } else {
            String::new()
        };
        return Err(ModelError::UnexpectedTensors {
            context: context.to_string(),
            names: format!("{}{more}", shown.join(", ")),
        });
    }
    if allow_head && (state.contains(HEAD_WEIGHT) || state.contains(HEAD_BIAS)) {
        head_from(state, arch.embed_dim, context)?;
    }
    Ok(())
}

fn check_missing(src: &ParamSource, context: &str) -> Result<()> {
    match src.missing().first() {
        None => Ok(()),
        Some(name) => Err(ModelError::MissingTensor {
            context: context.to_string(),
            name: name.clone(),
            expected: vec![],
        }),
    }
}

/// Builds a classification head from a `[classes, embed]` weight (bias 0).
pub fn head_state(weight: Vec<f32>, classes: usize, embed_dim: usize) -> StateDict {
    let mut out = StateDict::new();
    out.insert(
        HEAD_WEIGHT,
        HostTensor::new(vec![classes, embed_dim], DType::F32, weight),
    );
    out.insert(
        HEAD_BIAS,
        HostTensor::new(vec![classes], DType::F32, vec![0.0; classes]),
    );
    out
}

/// Collects every float parameter with its module path (`a.b.c`).
struct Collector {
    path: Vec<String>,
    out: Vec<(String, HostTensor)>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let data = t.into_data().try_into_vec_as::<f32>().unwrap_or_default();
        self.out.push((
            self.path.join("."),
            HostTensor::new(shape, DType::F32, data),
        ));
    }
}

/// Module path → canonical key: the text tower's fields live at the top level in OpenAI's
/// naming, and `logit_scale` is 0-dim there.
fn canonical_entry(path: &str, mut t: HostTensor) -> (String, HostTensor) {
    let key = canonical_key(path);
    if key.ends_with("logit_scale") {
        t.shape.clear();
    }
    (key, t)
}

fn canonical_key(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("text.") {
        rest.to_string()
    } else if let Some(rest) = path.strip_prefix("model.text.") {
        format!("model.{rest}")
    } else {
        path.to_string()
    }
}

/// Canonical state dict of a module (f32). Works for [`ClipModel`] (OpenAI keys) and
/// [`ImageClassifier`] (model-soups keys: `model.*`, `classification_head.*`).
pub fn module_state<M: Module>(module: &M) -> StateDict {
    let mut c = Collector {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut c);
    let mut sd = StateDict::new();
    for (path, t) in c.out {
        let (k, t) = canonical_entry(&path, t);
        sd.insert(k, t);
    }
    sd
}

/// Writes named tensors into an existing module, keeping every parameter's `ParamId` (and so
/// its optimizer state) and its requires-grad setting: the periodic merge hook's write-back.
/// The tensors are fresh (built from host data), never another module's, so no run ever picks
/// up a second run's ids. `state` uses the keys of [`module_state`]; every parameter must be
/// present with the same element count.
pub fn apply_state<M: Module>(module: M, state: &StateDict, context: &str) -> Result<M> {
    let mut applier = Applier {
        path: Vec::new(),
        state,
        problems: Vec::new(),
    };
    let module = module.map(&mut applier);
    match applier.problems.into_iter().next() {
        None => Ok(module),
        Some(reason) => Err(ModelError::Invalid {
            context: context.to_string(),
            reason,
        }),
    }
}

struct Applier<'a> {
    path: Vec<String>,
    state: &'a StateDict,
    problems: Vec<String>,
}

impl ModuleMapper for Applier<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = canonical_key(&self.path.join("."));
        let Some(t) = self.state.get(&key) else {
            self.problems
                .push(format!("no tensor for parameter `{key}`"));
            return param;
        };
        let shape = param.shape().dims::<D>();
        if t.numel() != shape.iter().product::<usize>() {
            self.problems.push(format!(
                "tensor `{key}` has shape {:?}, the parameter has {shape:?}",
                t.shape
            ));
            return param;
        }
        let data = t.data.clone();
        param.map(move |old| {
            let grad = old.is_require_grad();
            let fresh = Tensor::<D>::from_data(TensorData::new(data, shape), &old.device());
            if grad { fresh.require_grad() } else { fresh }
        })
    }
}

/// The canonical state dict of a classifier, with `model.` stripped (OpenAI keys plus
/// `classification_head.*`), ready for [`naming::from_canonical`].
pub fn classifier_state(classifier: &ImageClassifier) -> StateDict {
    canonical_of_module_state(module_state(classifier))
}

/// A classifier's module state in canonical naming: its module tree nests the CLIP model
/// under `model.`, which no checkpoint naming has.
pub fn canonical_of_module_state(state: StateDict) -> StateDict {
    state.rename(|k| Some(k.strip_prefix("model.").unwrap_or(k).to_string()))
}

/// `state` followed by `extras` (e.g. [`Checkpoint::extras`]) for a complete export.
pub fn with_extras(mut state: StateDict, extras: &StateDict) -> StateDict {
    for (name, t) in extras.iter() {
        state.insert(name, t.clone());
    }
    state
}

/// Writes a canonical state dict in `naming`, each tensor in `dtype` (or its own dtype).
pub fn export(state: &StateDict, naming: Naming, dtype: Option<DType>, path: &Path) -> Result<()> {
    let out = naming::from_canonical(state, naming)?;
    Ok(out.write_safetensors(path, dtype, None)?)
}

/// Copies the source dtypes of `like` onto `state` so an export reproduces the input bytes.
pub fn with_dtypes_of(mut state: StateDict, like: &StateDict) -> StateDict {
    let names: Vec<String> = state.names().map(str::to_string).collect();
    for n in names {
        if let (Some(src), Some(t)) = (like.get(&n), state.get_mut(&n)) {
            t.dtype = src.dtype;
        }
    }
    state
}
