//! CLIP in burn. Field names follow OpenAI's state-dict keys, so a module's parameter path is
//! its canonical checkpoint key (see [`crate::load::module_state`]); weights keep PyTorch's layout
//! (`[out, in]`) so import, export and Model Stock's per-tensor ratios need no transposes.

use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::module::{attention, embedding, layer_norm, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use clipstock_tensors::rng::{GOLDEN_GAMMA, SplitMix64};

use crate::arch::{ClipArch, TextArch, VisionArch};
use crate::fused::ClipOps;

pub const LN_EPS: f64 = 1e-5;

/// Mixed precision as PyTorch's autocast applies it to CLIP: the matrix products (linear
/// layers, attention, the patch embedding, the projection and the head) run in a 16-bit float
/// type, while the parameters, LayerNorm, the residual stream, the L2 normalisation and the
/// loss stay f32. Casting is differentiable (its backward casts the gradient back), so
/// gradients reach the f32 parameters as f32 and the optimizer, clipping and merges never see a
/// 16-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Autocast {
    dtype: Option<FloatDType>,
}

impl Autocast {
    /// Everything in f32.
    pub const OFF: Autocast = Autocast { dtype: None };

    /// Matrix products in `dtype`; `F32` is [`Autocast::OFF`].
    pub fn to(dtype: FloatDType) -> Self {
        Autocast {
            dtype: (dtype != FloatDType::F32).then_some(dtype),
        }
    }

    /// The reduced type, `None` when off.
    pub fn dtype(self) -> Option<FloatDType> {
        self.dtype
    }

    /// `t` in the reduced type (a no-op when off or already there).
    fn low<const D: usize>(self, t: Tensor<D>) -> Tensor<D> {
        match self.dtype {
            Some(d) => t.cast(d),
            None => t,
        }
    }

    /// `t` back in f32 for the parts autocast keeps at full precision.
    fn full<const D: usize>(self, t: Tensor<D>) -> Tensor<D> {
        match self.dtype {
            Some(_) => t.cast(FloatDType::F32),
            None => t,
        }
    }
}

#[derive(Module, Debug)]
pub struct ClipLayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
}

impl ClipLayerNorm {
    fn new(width: usize, src: &mut ParamSource, prefix: &str) -> Self {
        ClipLayerNorm {
            weight: src.param(&format!("{prefix}.weight"), [width], Fill::Ones),
            bias: src.param(&format!("{prefix}.bias"), [width], Fill::Zeros),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        layer_norm(x, self.weight.val(), Some(self.bias.val()), LN_EPS)
    }
}

/// `nn.Linear` in PyTorch layout: `weight` is `[out, in]`.
#[derive(Module, Debug)]
pub struct ClipLinear {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

impl ClipLinear {
    pub fn new(d_in: usize, d_out: usize, src: &mut ParamSource, prefix: &str) -> Self {
        ClipLinear {
            weight: src.param(
                &format!("{prefix}.weight"),
                [d_out, d_in],
                Fill::Normal((d_in as f32).powf(-0.5)),
            ),
            bias: src.param(&format!("{prefix}.bias"), [d_out], Fill::Zeros),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_with(x, Autocast::OFF)
    }

    /// The output stays in the reduced type, so consecutive products (attention's
    /// projections, the MLP) do not round-trip through f32.
    pub fn forward_with<const D: usize>(&self, x: Tensor<D>, ac: Autocast) -> Tensor<D> {
        linear(
            ac.low(x),
            ac.low(self.weight.val()).transpose(),
            Some(ac.low(self.bias.val())),
        )
    }
}

#[derive(Module, Debug)]
pub struct ClipMlp {
    pub c_fc: ClipLinear,
    pub c_proj: ClipLinear,
}

/// OpenAI CLIP's activation: x·σ(1.702x).
///
/// On flex in f32, one threaded pass forward and one backward ([`crate::fused`]) with burn's
/// bits, instead of burn's three single-threaded operations and their five backward passes.
/// Elsewhere burn's operations. `Device`'s equality does not see autodiff, so a tracked flex
/// tensor takes the fused path too, and it records its own backward.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.device() != Device::flex() || x.dtype() != burn::tensor::DType::F32 {
        return x.clone() * sigmoid(x * 1.702);
    }
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as ClipOps>::quick_gelu(x.into_dispatch()))
}

/// Multi-head attention with one fused `in_proj` (q, k, v stacked along the output axis), as
/// OpenAI stores it; Model Stock computes one ratio over that fused tensor.
#[derive(Module, Debug)]
pub struct ClipAttention {
    pub in_proj_weight: Param<Tensor<2>>,
    pub in_proj_bias: Param<Tensor<1>>,
    pub out_proj: ClipLinear,
    pub heads: usize,
}

impl ClipAttention {
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        self.forward_with(x, causal, Autocast::OFF)
    }

    /// Returns the output in the reduced type (see [`Autocast`]).
    pub fn forward_with(&self, x: Tensor<3>, causal: bool, ac: Autocast) -> Tensor<3> {
        let [b, l, w] = x.dims();
        let h = self.heads;
        let hd = w / h;
        let qkv = linear(
            ac.low(x),
            ac.low(self.in_proj_weight.val()).transpose(),
            Some(ac.low(self.in_proj_bias.val())),
        );
        // [b, l, 3, h, hd] -> three [b, h, l, hd]
        let qkv = qkv.reshape([b, l, 3, h, hd]).permute([2, 0, 3, 1, 4]);
        let q = qkv.clone().narrow(0, 0, 1).squeeze_dim::<4>(0);
        let k = qkv.clone().narrow(0, 1, 1).squeeze_dim::<4>(0);
        let v = qkv.narrow(0, 2, 1).squeeze_dim::<4>(0);
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        };
        let out = attention(q, k, v, None, None, options);
        let out = out.swap_dims(1, 2).reshape([b, l, w]);
        self.out_proj.forward_with(out, ac)
    }
}

#[derive(Module, Debug)]
pub struct ResidualAttentionBlock {
    pub ln_1: ClipLayerNorm,
    pub attn: ClipAttention,
    pub ln_2: ClipLayerNorm,
    pub mlp: ClipMlp,
}

impl ResidualAttentionBlock {
    fn new(width: usize, heads: usize, mlp: usize, src: &mut ParamSource, prefix: &str) -> Self {
        ResidualAttentionBlock {
            ln_1: ClipLayerNorm::new(width, src, &format!("{prefix}.ln_1")),
            attn: ClipAttention {
                in_proj_weight: src.param(
                    &format!("{prefix}.attn.in_proj_weight"),
                    [3 * width, width],
                    Fill::Normal((width as f32).powf(-0.5)),
                ),
                in_proj_bias: src.param(
                    &format!("{prefix}.attn.in_proj_bias"),
                    [3 * width],
                    Fill::Zeros,
                ),
                out_proj: ClipLinear::new(width, width, src, &format!("{prefix}.attn.out_proj")),
                heads,
            },
            ln_2: ClipLayerNorm::new(width, src, &format!("{prefix}.ln_2")),
            mlp: ClipMlp {
                c_fc: ClipLinear::new(width, mlp, src, &format!("{prefix}.mlp.c_fc")),
                c_proj: ClipLinear::new(mlp, width, src, &format!("{prefix}.mlp.c_proj")),
            },
        }
    }

    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        self.forward_with(x, causal, Autocast::OFF)
    }

    /// `x` and the result are f32; both branches compute in the reduced type.
    pub fn forward_with(&self, x: Tensor<3>, causal: bool, ac: Autocast) -> Tensor<3> {
        let a = self
            .attn
            .forward_with(self.ln_1.forward(x.clone()), causal, ac);
        let x = x + ac.full(a);
        let h = self.mlp.c_fc.forward_with(self.ln_2.forward(x.clone()), ac);
        x + ac.full(self.mlp.c_proj.forward_with(quick_gelu(h), ac))
    }
}

#[derive(Module, Debug)]
pub struct ClipTransformer {
    pub resblocks: Vec<ResidualAttentionBlock>,
}

impl ClipTransformer {
    fn new(
        width: usize,
        layers: usize,
        heads: usize,
        mlp: usize,
        src: &mut ParamSource,
        prefix: &str,
    ) -> Self {
        ClipTransformer {
            resblocks: (0..layers)
                .map(|i| {
                    let p = format!("{prefix}.resblocks.{i}");
                    ResidualAttentionBlock::new(width, heads, mlp, src, &p)
                })
                .collect(),
        }
    }

    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        self.forward_with(x, causal, Autocast::OFF)
    }

    pub fn forward_with(&self, mut x: Tensor<3>, causal: bool, ac: Autocast) -> Tensor<3> {
        for block in &self.resblocks {
            x = block.forward_with(x, causal, ac);
        }
        x
    }
}

/// Patch embedding without bias, as OpenAI's `conv1`. Stored in conv layout
/// `[width, 3, p, p]`; computed as a matmul over non-overlapping patches, which is the same
/// arithmetic as the strided convolution and much faster on CPU backends.
#[derive(Module, Debug)]
pub struct ClipPatchEmbed {
    pub weight: Param<Tensor<4>>,
}

#[derive(Module, Debug)]
pub struct ClipVisionTransformer {
    pub conv1: ClipPatchEmbed,
    pub class_embedding: Param<Tensor<1>>,
    pub positional_embedding: Param<Tensor<2>>,
    pub ln_pre: ClipLayerNorm,
    pub transformer: ClipTransformer,
    pub ln_post: ClipLayerNorm,
    pub proj: Param<Tensor<2>>,
    pub patch_size: usize,
}

impl ClipVisionTransformer {
    pub fn new(arch: &VisionArch, embed_dim: usize, src: &mut ParamSource) -> Self {
        let w = arch.width;
        let p = arch.patch_size;
        let scale = Fill::Normal((w as f32).powf(-0.5));
        ClipVisionTransformer {
            conv1: ClipPatchEmbed {
                weight: src.param(
                    "visual.conv1.weight",
                    [w, 3, p, p],
                    Fill::Normal((3.0 * (p * p) as f32).powf(-0.5)),
                ),
            },
            class_embedding: src.param("visual.class_embedding", [w], scale),
            positional_embedding: src.param(
                "visual.positional_embedding",
                [arch.seq_len(), w],
                scale,
            ),
            ln_pre: ClipLayerNorm::new(w, src, "visual.ln_pre"),
            transformer: ClipTransformer::new(
                w,
                arch.layers,
                arch.heads,
                arch.mlp_width,
                src,
                "visual.transformer",
            ),
            ln_post: ClipLayerNorm::new(w, src, "visual.ln_post"),
            proj: src.param("visual.proj", [w, embed_dim], scale),
            patch_size: p,
        }
    }

    /// The input side length this tower was built for: the positional embedding holds one
    /// class token plus a square grid of patches.
    pub fn image_size(&self) -> usize {
        let [seq, _] = self.positional_embedding.dims();
        let grid = (seq.saturating_sub(1) as f64).sqrt().round() as usize;
        grid * self.patch_size
    }

    /// `images`: `[batch, 3, size, size]`, already CLIP-normalised. Returns `[batch, embed]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, Autocast::OFF)
    }

    /// [`Self::forward`] under `ac`; takes and returns f32.
    pub fn forward_with(&self, images: Tensor<4>, ac: Autocast) -> Tensor<2> {
        let [b, c, hgt, wid] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (hgt / p, wid / p);
        let weight = self.conv1.weight.val();
        let [width, _, _, _] = weight.dims();
        let patches = images
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        let x = ac.full(
            ac.low(patches).matmul(
                ac.low(weight)
                    .reshape([width, c * p * p])
                    .transpose()
                    .unsqueeze_dim::<3>(0),
            ),
        );
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, width])
            .expand([b, 1, width]);
        let x = Tensor::cat(vec![cls, x], 1);
        let x = x + self.positional_embedding.val().unsqueeze_dim::<3>(0);
        let x = self.ln_pre.forward(x);
        let x = self.transformer.forward_with(x, false, ac);
        let cls = x.narrow(1, 0, 1).squeeze_dim::<2>(1);
        let cls = self.ln_post.forward(cls);
        ac.full(ac.low(cls).matmul(ac.low(self.proj.val())))
    }
}

#[derive(Module, Debug)]
pub struct ClipTokenEmbedding {
    pub weight: Param<Tensor<2>>,
}

/// The text tower. Its fields sit at the top level of OpenAI's state dict (no `text.` prefix);
/// [`crate::load::module_state`] maps the module path accordingly.
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    pub token_embedding: ClipTokenEmbedding,
    pub positional_embedding: Param<Tensor<2>>,
    pub transformer: ClipTransformer,
    pub ln_final: ClipLayerNorm,
    pub text_projection: Param<Tensor<2>>,
}

impl ClipTextTransformer {
    pub fn new(arch: &TextArch, embed_dim: usize, src: &mut ParamSource) -> Self {
        let w = arch.width;
        ClipTextTransformer {
            token_embedding: ClipTokenEmbedding {
                weight: src.param(
                    "token_embedding.weight",
                    [arch.vocab_size, w],
                    Fill::Normal(0.02),
                ),
            },
            positional_embedding: src.param(
                "positional_embedding",
                [arch.context_length, w],
                Fill::Normal(0.01),
            ),
            transformer: ClipTransformer::new(
                w,
                arch.layers,
                arch.heads,
                arch.mlp_width,
                src,
                "transformer",
            ),
            ln_final: ClipLayerNorm::new(w, src, "ln_final"),
            text_projection: src.param(
                "text_projection",
                [w, embed_dim],
                Fill::Normal((w as f32).powf(-0.5)),
            ),
        }
    }

    /// `tokens`: `[batch, context]` token ids, zero-padded after the end-of-text token.
    /// Pools at the argmax token id (the end-of-text token has the largest id), as OpenAI does.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        let [b, l] = tokens.dims();
        let x = embedding(self.token_embedding.weight.val(), tokens.clone());
        let pos = self.positional_embedding.val().narrow(0, 0, l);
        let x = x + pos.unsqueeze_dim::<3>(0);
        let x = self.transformer.forward(x, true);
        let [_, _, w] = x.dims();
        let eot = tokens.argmax(1).reshape([b, 1, 1]).expand([b, 1, w]);
        let pooled = x.gather(1, eot).reshape([b, w]);
        // LayerNorm is per position, so normalising only the pooled rows is exact.
        let pooled = self.ln_final.forward(pooled);
        pooled.matmul(self.text_projection.val())
    }
}

#[derive(Module, Debug)]
pub struct ClipModel {
    pub visual: ClipVisionTransformer,
    pub text: Option<ClipTextTransformer>,
    /// Stored 0-dim in PyTorch; burn has no rank-0 tensors, so `[1]` here.
    pub logit_scale: Param<Tensor<1>>,
}

impl ClipModel {
    /// A randomly initialised model (OpenAI's init scales; for benchmarks and tests).
    pub fn random(arch: &ClipArch, seed: u64, device: &Device) -> Self {
        Self::build(arch, &mut ParamSource::random(seed, device))
    }

    /// Builds the model from `src`, which must hold every tensor of `arch` in canonical naming
    /// (see [`crate::load`], which validates a checkpoint before calling this).
    pub fn build(arch: &ClipArch, src: &mut ParamSource) -> Self {
        ClipModel {
            visual: ClipVisionTransformer::new(&arch.vision, arch.embed_dim, src),
            text: arch
                .text
                .as_ref()
                .map(|t| ClipTextTransformer::new(t, arch.embed_dim, src)),
            logit_scale: src.param("logit_scale", [1], Fill::Const((1.0f32 / 0.07).ln())),
        }
    }

    pub fn encode_image(&self, images: Tensor<4>) -> Tensor<2> {
        self.visual.forward(images)
    }

    /// `None` when the checkpoint had no text tower.
    pub fn encode_text(&self, tokens: Tensor<2, Int>) -> Option<Tensor<2>> {
        self.text.as_ref().map(|t| t.forward(tokens))
    }
}

/// `encode_image` → L2 normalise → linear head: the model that is fine-tuned and merged. The
/// paths `model.*` / `classification_head.*` are model-soups' state-dict keys.
#[derive(Module, Debug)]
pub struct ImageClassifier {
    pub model: ClipModel,
    pub classification_head: ClipLinear,
}

impl ImageClassifier {
    /// A randomly initialised classifier: `arch`'s towers, then a `[num_classes, embed]` head
    /// from the same seeded stream (benchmarks and tests).
    pub fn random(arch: &ClipArch, num_classes: usize, seed: u64, device: &Device) -> Self {
        let mut src = ParamSource::random(seed, device);
        let model = ClipModel::build(arch, &mut src);
        let classification_head =
            ClipLinear::new(arch.embed_dim, num_classes, &mut src, "classification_head");
        ImageClassifier {
            model,
            classification_head,
        }
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, Autocast::OFF)
    }

    /// Logits under `ac`, always returned in f32 (the loss is computed at full precision).
    pub fn forward_with(&self, images: Tensor<4>, ac: Autocast) -> Tensor<2> {
        let f = self.model.visual.forward_with(images, ac);
        ac.full(self.classification_head.forward_with(l2_normalize(f), ac))
    }

    pub fn num_classes(&self) -> usize {
        self.classification_head.bias.dims()[0]
    }
}

/// Row-wise L2 normalisation, as `f / f.norm(dim=-1, keepdim=True)`.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
    x / norm
}

/// How a freshly initialised parameter is filled when no checkpoint provides it.
#[derive(Debug, Clone, Copy)]
pub enum Fill {
    Normal(f32),
    Ones,
    Zeros,
    Const(f32),
}

/// Where module constructors take their parameters from: a deterministic random initialiser
/// or a validated state dict in canonical naming. One constructor tree serves both, so the
/// module layout and the checkpoint key list cannot drift apart.
pub struct ParamSource<'a> {
    device: Device,
    kind: SourceKind<'a>,
}

enum SourceKind<'a> {
    Random(Init),
    State {
        state: &'a crate::state::StateDict,
        missing: Vec<String>,
    },
}

impl<'a> ParamSource<'a> {
    pub fn random(seed: u64, device: &Device) -> Self {
        ParamSource {
            device: device.clone(),
            kind: SourceKind::Random(Init::new(seed)),
        }
    }

    /// Parameters from `state`, which callers validate first ([`crate::load::validate`]).
    /// Anything still missing is recorded, never filled in: check [`ParamSource::missing`].
    pub fn state(state: &'a crate::state::StateDict, device: &Device) -> Self {
        ParamSource {
            device: device.clone(),
            kind: SourceKind::State {
                state,
                missing: Vec::new(),
            },
        }
    }

    /// Tensors a state source could not provide (wrong name or element count).
    pub fn missing(&self) -> &[String] {
        match &self.kind {
            SourceKind::Random(_) => &[],
            SourceKind::State { missing, .. } => missing,
        }
    }

    pub fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        fill: Fill,
    ) -> Param<Tensor<D>> {
        let n: usize = shape.iter().product();
        let data = match &mut self.kind {
            SourceKind::Random(init) => match fill {
                Fill::Normal(std) => init.normal_vec(n, std),
                Fill::Ones => vec![1.0; n],
                Fill::Zeros => vec![0.0; n],
                Fill::Const(c) => vec![c; n],
            },
            SourceKind::State { state, missing } => match state.get(name) {
                Some(t) if t.data.len() == n => t.data.clone(),
                _ => {
                    missing.push(name.to_string());
                    vec![0.0; n]
                }
            },
        };
        Param::from_data(TensorData::new(data, shape), &self.device)
    }
}

/// Deterministic normal initialiser (Box–Muller over a splitmix64 stream), so random models are
/// identical on every backend and machine.
pub struct Init {
    rng: SplitMix64,
}

impl Init {
    pub fn new(seed: u64) -> Self {
        Init {
            rng: SplitMix64(seed ^ GOLDEN_GAMMA),
        }
    }

    fn uniform(&mut self) -> f32 {
        self.rng.unit_open()
    }

    pub fn normal_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f32::consts::TAU * u2;
            out.push(r * t.cos() * std);
            out.push(r * t.sin() * std);
        }
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        t.into_data()
            .iter::<f32>()
            .map(f32::to_bits)
            .collect::<Vec<_>>()
    }

    /// Inputs on both sides of the sigmoid's branch, with ±0 and values whose sigmoid
    /// saturates.
    fn activations(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut v = Init::new(seed).normal_vec(rows * cols, 4.0);
        v[..4].copy_from_slice(&[0.0, -0.0, 90.0, -90.0]);
        v
    }

    /// The fused forward is burn's three operations on flex, bit for bit, below and above
    /// the threaded size, on a transposed view, and on a buffer something else still holds.
    #[test]
    fn fused_quick_gelu_is_burns_quick_gelu() {
        let device = Device::flex();
        for &(rows, cols) in &[(3usize, 5usize), (64, 4096)] {
            let v = activations(rows, cols, rows as u64);
            let x = Tensor::<2>::from_data(TensorData::new(v, [rows, cols]), &device);
            let want = bits(x.clone() * sigmoid(x.clone() * 1.702));
            let kept = x.clone();
            assert_eq!(bits(quick_gelu(x.clone())), want, "{rows}×{cols} shared");
            assert_eq!(bits(quick_gelu(x)), want, "{rows}×{cols} in place");
            let t = kept.transpose();
            let want = bits(t.clone() * sigmoid(t.clone() * 1.702));
            assert_eq!(bits(quick_gelu(t)), want, "{rows}×{cols} transposed");
        }
    }

    /// Under autodiff the fused activation has burn's forward and the gradient burn's
    /// decomposition gives its input, bit for bit, for an arbitrary upstream gradient.
    #[test]
    fn fused_quick_gelu_has_burns_gradient() {
        let device = Device::flex().autodiff();
        for &(rows, cols) in &[(3usize, 5usize), (64, 4096)] {
            let n = rows * cols;
            let x = TensorData::new(activations(rows, cols, 7 + n as u64), [rows, cols]);
            let w = TensorData::new(Init::new(n as u64).normal_vec(n, 1.0), [rows, cols]);
            let w = Tensor::<2>::from_data(w, &device);
            let run = |fused: bool| {
                let x = Tensor::<2>::from_data(x.clone(), &device).require_grad();
                let y = if fused {
                    quick_gelu(x.clone())
                } else {
                    x.clone() * sigmoid(x.clone() * 1.702)
                };
                let grads = (y.clone() * w.clone()).sum().backward();
                let g = x.grad(&grads).expect("a gradient for x");
                (bits(y.inner()), bits(g))
            };
            let (want_y, want_g) = run(false);
            let (y, g) = run(true);
            assert_eq!(y, want_y, "{rows}×{cols} forward");
            assert_eq!(g, want_g, "{rows}×{cols} gradient");
        }
    }
}
