//! The merge engine shared by every method and every kind of input/output.
//!
//! Three steps:
//! 1. [`build_plan`] checks the inputs agree (names, shapes, dtypes) and decides per tensor what
//!    happens to it (merge, average, keep the anchor, copy) and which ratio group it is in;
//! 2. [`analyze`] streams over the inputs once to compute the delta Gram matrices (Model Stock
//!    only) and check non-float tensors, then derives cos and t per tensor or group;
//! 3. [`write`] streams over the inputs again and emits each output tensor in order.
//!
//! Steps 2 and 3 work on `CHUNK`-element slices of one tensor at a time, so memory stays at a
//! few buffers per thread plus `POOL` output windows, whatever the checkpoint size. Step 3 writes
//! on its own thread while the rayon pool computes the next windows.
//!
//! For files ([`analyze_and_write`]) the two steps are interleaved: a tensor's statistics are
//! computed right before its output, while the writer is still busy with earlier tensors —
//! putting the output into the page cache costs as much as a whole statistics pass, and on a
//! few cores only overlapping the two hides it. Tensors in a ratio group still get their
//! statistics first, because the ratio depends on every member. An input error found
//! mid-way removes the temporary output, so a failed merge still leaves nothing behind.
//! [`analyze`] alone (reports, in-memory merges) runs step 2 completely before step 3.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rayon::prelude::*;

use crate::dtype::DType;
use crate::error::{MergeError, Result};
use crate::options::{MergeOptions, Method, Unselected};
use crate::ratio::{DeltaGram, angle_deg, model_stock_ratio};
use crate::report::{Action, Flag, MergeReport, MergeSummary, TensorReport};
use crate::select::Selection;
use crate::source::{Source, Tensor, TensorInfo};

/// Elements per unit of parallel work: large enough to amortise scheduling, small enough that
/// the N+1 decoded f32 buffers of a chunk stay in L2.
pub(crate) const CHUNK: usize = 16 * 1024;
/// Elements per output window handed to the sink (1 MiB of f32): small enough that a window
/// is still in cache when the writer copies it, large enough that one write covers many pages.
const WINDOW: usize = 16 * CHUNK;

/// The inputs of one merge. The reference (anchor, else the first model) fixes the output's
/// names, order and default dtypes.
pub(crate) struct Inputs<'a> {
    pub anchor: Option<&'a dyn Source>,
    pub models: Vec<&'a dyn Source>,
}

impl<'a> Inputs<'a> {
    fn reference(&self) -> Option<&'a dyn Source> {
        self.anchor.or_else(|| self.models.first().copied())
    }

    fn all(&self) -> impl Iterator<Item = &'a dyn Source> + '_ {
        self.anchor.into_iter().chain(self.models.iter().copied())
    }
}

/// One output tensor and everything decided about it.
pub(crate) struct Entry {
    pub info: TensorInfo,
    pub out_dtype: DType,
    /// Index of the tensor in the reference source (the anchor when there is one).
    ref_idx: usize,
    /// Index of the tensor in each model source.
    model_idx: Vec<usize>,
    pub action: Action,
    pub flags: Vec<Flag>,
    pub group: Option<String>,
    gram: Option<DeltaGram>,
    pub cos: Option<f64>,
    pub t: Option<f64>,
    pub t_unclamped: Option<f64>,
}

pub(crate) struct Plan {
    pub entries: Vec<Entry>,
    method: Method,
    n: usize,
}

/// Checks the inputs against each other and the options, and decides each tensor's action.
/// `group_of` maps a tensor name to its ratio-group key.
pub(crate) fn build_plan(
    inputs: &Inputs<'_>,
    opts: &MergeOptions,
    group_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan> {
    let method = opts.method.clone();
    method.validate()?;
    let n = inputs.models.len();
    if n < method.min_models() {
        return Err(MergeError::TooFewModels {
            method: method.name(),
            need: method.min_models(),
            got: n,
        });
    }
    if inputs.anchor.is_none() {
        if method.needs_anchor() {
            return Err(MergeError::MissingAnchor {
                method: method.name(),
            });
        }
        if opts.unselected == Unselected::Anchor {
            return Err(MergeError::MissingAnchor {
                method: "keeping unselected tensors at the anchor",
            });
        }
    }
    if let Some(dt) = opts.output_dtype
        && !dt.is_float()
    {
        return Err(MergeError::InvalidOption(format!(
            "output dtype must be a float dtype (F32, F16, BF16, F64), got {dt}"
        )));
    }
    let Some(reference) = inputs.reference() else {
        return Err(MergeError::TooFewModels {
            method: method.name(),
            need: 1,
            got: 0,
        });
    };

    // Same key sets everywhere: name the first tensor one side lacks.
    for src in inputs.all().skip(1) {
        for t in reference.tensors() {
            if src.find(&t.name).is_none() {
                return Err(MergeError::MissingTensor {
                    tensor: t.name.clone(),
                    present_in: reference.label().to_string(),
                    missing_from: src.label().to_string(),
                });
            }
        }
        for t in src.tensors() {
            if reference.find(&t.name).is_none() {
                return Err(MergeError::MissingTensor {
                    tensor: t.name.clone(),
                    present_in: src.label().to_string(),
                    missing_from: reference.label().to_string(),
                });
            }
        }
    }

    let selection = Selection::new(&opts.include, &opts.exclude)?;
    selection.check_all_match(
        reference.tensors().iter().map(|t| t.name.as_str()),
        reference.label(),
    )?;

    let mut entries = Vec::with_capacity(reference.tensors().len());
    for (ref_idx, info) in reference.tensors().iter().enumerate() {
        let mut flags = Vec::new();
        let mut model_idx = Vec::with_capacity(n);
        for src in inputs.all().skip(1) {
            let idx = src.find(&info.name).unwrap_or(0);
            let other = &src.tensors()[idx];
            if other.shape != info.shape {
                return Err(MergeError::ShapeMismatch {
                    tensor: info.name.clone(),
                    file_a: reference.label().to_string(),
                    shape_a: info.shape.clone().into(),
                    file_b: src.label().to_string(),
                    shape_b: other.shape.clone().into(),
                });
            }
            let compatible = if info.dtype.is_float() {
                other.dtype.is_float()
            } else {
                other.dtype == info.dtype
            };
            if !compatible {
                return Err(MergeError::DtypeMismatch {
                    tensor: info.name.clone(),
                    file_a: reference.label().to_string(),
                    dtype_a: info.dtype,
                    file_b: src.label().to_string(),
                    dtype_b: other.dtype,
                });
            }
            if other.dtype != info.dtype && !flags.contains(&Flag::MixedDtype) {
                flags.push(Flag::MixedDtype);
            }
        }
        for m in &inputs.models {
            model_idx.push(m.find(&info.name).unwrap_or(0));
        }
        let (action, out_dtype) = if !info.dtype.is_float() {
            flags.push(Flag::NotFloat);
            (Action::Copied, info.dtype)
        } else if selection.selects(&info.name) {
            (Action::Merged, opts.output_dtype.unwrap_or(info.dtype))
        } else {
            flags.push(Flag::Unselected);
            let a = match opts.unselected {
                Unselected::Average => Action::Averaged,
                Unselected::Anchor => Action::Anchor,
            };
            (a, opts.output_dtype.unwrap_or(info.dtype))
        };
        let group = match (&method, action) {
            (Method::ModelStock { .. }, Action::Merged) => group_of(&info.name),
            _ => None,
        };
        entries.push(Entry {
            info: info.clone(),
            out_dtype,
            ref_idx,
            model_idx,
            action,
            flags,
            group,
            gram: None,
            cos: None,
            t: None,
            t_unclamped: None,
        });
    }
    // The merge is computed in f32; writing it back as a 16-bit anchor's dtype would round
    // away what the ratio changed, and with mixed inputs "the anchor's dtype" is arbitrary.
    // The official notebook's merged state dict is f32, so that is the default then.
    let widen = opts.output_dtype.is_none()
        && entries.iter().any(|e| {
            e.info.dtype.is_float()
                && (e.info.dtype.size() == 2 || e.flags.contains(&Flag::MixedDtype))
        });
    if widen {
        for e in entries.iter_mut().filter(|e| e.info.dtype.is_float()) {
            e.out_dtype = DType::F32;
        }
    }
    Ok(Plan { entries, method, n })
}

thread_local! {
    // Per-thread decode buffers reused across chunks (one per input): allocating them per task
    // would hand out fresh, page-faulting memory every time. Inputs already stored as aligned
    // f32 (mapped files, memory) are borrowed and never touch these.
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(count: usize, f: impl FnOnce(&mut [Vec<f32>]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut s = cell.borrow_mut();
        if s.len() < count {
            s.resize_with(count, Vec::new);
        }
        f(&mut s[..count])
    })
}

/// Gram of the deltas over elements `[start, start + len)` of one tensor.
fn gram_chunk(
    inputs: &Inputs<'_>,
    anchor: &dyn Source,
    e: &Entry,
    start: usize,
    len: usize,
) -> Result<DeltaGram> {
    let n = inputs.models.len();
    with_scratch(n + 1, |bufs| {
        let (abuf, mbufs) = bufs.split_at_mut(1);
        let a = anchor.f32s(e.ref_idx, start..start + len, &mut abuf[0])?;
        let mut ms: Vec<&[f32]> = Vec::with_capacity(n);
        for ((m, &idx), buf) in inputs.models.iter().zip(&e.model_idx).zip(mbufs.iter_mut()) {
            ms.push(m.f32s(idx, start..start + len, buf)?);
        }
        let mut g = DeltaGram::new(n);
        g.accumulate_from(a, &ms);
        Ok(g)
    })
}

/// `out[k] = c_mean·Σ_i models[i][k] + c_anchor·anchor[k]` in f64, rounded once to f32.
/// Unrolled per N so that each output element is produced in one sweep over the inputs; built
/// twice (baseline and AVX2, see [`crate::simd`]) with bit-identical results.
fn combine_fixed<const N: usize>(
    models: &[&[f32]],
    anchor: Option<&[f32]>,
    out: &mut [f32],
    c_mean: f64,
    c_anchor: f64,
) {
    crate::simd::dispatch!(
        combine_fixed_avx2::<N>(models, anchor, out, c_mean, c_anchor),
        combine_fixed_body::<N>(models, anchor, out, c_mean, c_anchor),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn combine_fixed_avx2<const N: usize>(
    models: &[&[f32]],
    anchor: Option<&[f32]>,
    out: &mut [f32],
    c_mean: f64,
    c_anchor: f64,
) {
    combine_fixed_body::<N>(models, anchor, out, c_mean, c_anchor);
}

#[inline(always)]
fn combine_fixed_body<const N: usize>(
    models: &[&[f32]],
    anchor: Option<&[f32]>,
    out: &mut [f32],
    c_mean: f64,
    c_anchor: f64,
) {
    let len = out.len();
    let ms: [&[f32]; N] = std::array::from_fn(|i| &models[i][..len]);
    match anchor {
        Some(a) => {
            let a = &a[..len];
            for k in 0..len {
                let mut s = 0f64;
                for m in &ms {
                    s += f64::from(m[k]);
                }
                out[k] = (c_mean * s + c_anchor * f64::from(a[k])) as f32;
            }
        }
        None => {
            for k in 0..len {
                let mut s = 0f64;
                for m in &ms {
                    s += f64::from(m[k]);
                }
                out[k] = (c_mean * s) as f32;
            }
        }
    }
}

fn combine_any(
    models: &[&[f32]],
    anchor: Option<&[f32]>,
    out: &mut [f32],
    c_mean: f64,
    c_anchor: f64,
) {
    match models.len() {
        0 => combine_fixed::<0>(models, anchor, out, c_mean, c_anchor),
        1 => combine_fixed::<1>(models, anchor, out, c_mean, c_anchor),
        2 => combine_fixed::<2>(models, anchor, out, c_mean, c_anchor),
        3 => combine_fixed::<3>(models, anchor, out, c_mean, c_anchor),
        4 => combine_fixed::<4>(models, anchor, out, c_mean, c_anchor),
        _ => {
            let mut acc = vec![0f64; out.len()];
            for m in models {
                for (s, v) in acc.iter_mut().zip(m.iter()) {
                    *s += f64::from(*v);
                }
            }
            match anchor {
                Some(a) => {
                    for ((o, s), w) in out.iter_mut().zip(&acc).zip(a) {
                        *o = (c_mean * s + c_anchor * f64::from(*w)) as f32;
                    }
                }
                None => {
                    for (o, s) in out.iter_mut().zip(&acc) {
                        *o = (c_mean * s) as f32;
                    }
                }
            }
        }
    }
}

/// Whether every value is finite. `0·x` is 0 for finite x and NaN otherwise, and sums of zeros
/// and NaNs do not depend on order, so this vectorises (unlike a short-circuiting scan).
fn all_finite(values: &[f32]) -> bool {
    crate::simd::dispatch!(all_finite_avx2(values), all_finite_body(values))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn all_finite_avx2(values: &[f32]) -> bool {
    all_finite_body(values)
}

#[inline(always)]
fn all_finite_body(values: &[f32]) -> bool {
    let mut acc = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l] * 0.0;
        }
    }
    acc.iter().chain(tail).all(|v| v.is_finite())
}

/// Output values `t·mean + (1 − t)·w0`, written as `c_mean·Σ_i w_i + c_anchor·w0`, for
/// elements `[start, start + out.len())`. Inputs whose coefficient is 0 are not read. Returns
/// whether all outputs are finite.
fn combine_chunk(
    inputs: &Inputs<'_>,
    reference: &dyn Source,
    e: &Entry,
    start: usize,
    out: &mut [f32],
    c_mean: f64,
    c_anchor: f64,
) -> Result<bool> {
    let len = out.len();
    let n = if c_mean != 0.0 {
        inputs.models.len()
    } else {
        0
    };
    with_scratch(n + 1, |bufs| {
        let (abuf, mbufs) = bufs.split_at_mut(1);
        let a = if c_anchor != 0.0 {
            Some(reference.f32s(e.ref_idx, start..start + len, &mut abuf[0])?)
        } else {
            None
        };
        let mut ms: Vec<&[f32]> = Vec::with_capacity(n);
        for ((m, &idx), buf) in inputs.models[..n]
            .iter()
            .zip(&e.model_idx)
            .zip(mbufs.iter_mut())
        {
            ms.push(m.f32s(idx, start..start + len, buf)?);
        }
        combine_any(&ms, a, out, c_mean, c_anchor);
        Ok(all_finite(out))
    })
}

/// The error for a non-finite result in entry `e`: the first non-finite input value among
/// `anchor` and (with `models`) every model, or else the output itself, with ratio `t`.
fn non_finite_error(
    e: &Entry,
    inputs: &Inputs<'_>,
    anchor: Option<&dyn Source>,
    models: bool,
    t: f64,
) -> MergeError {
    let mut sources: Vec<(&dyn Source, usize)> =
        anchor.map(|a| (a, e.ref_idx)).into_iter().collect();
    if models {
        sources.extend(
            inputs
                .models
                .iter()
                .copied()
                .zip(e.model_idx.iter().copied()),
        );
    }
    match locate_non_finite(e, &sources) {
        Ok(Some(err)) | Err(err) => err,
        Ok(None) => MergeError::NonFiniteOutput {
            tensor: e.info.name.clone(),
            t,
        },
    }
}

/// Finds the first non-finite input value of `e` among `sources` (tensor indices alongside).
fn locate_non_finite(e: &Entry, sources: &[(&dyn Source, usize)]) -> Result<Option<MergeError>> {
    let mut buf = vec![0f32; CHUNK];
    for (src, idx) in sources {
        let numel = src.tensors()[*idx].numel();
        let mut start = 0;
        while start < numel {
            let len = CHUNK.min(numel - start);
            src.read_f32_into(*idx, start, &mut buf[..len])?;
            if let Some(k) = buf[..len].iter().position(|v| !v.is_finite()) {
                return Ok(Some(MergeError::NonFinite {
                    tensor: e.info.name.clone(),
                    file: src.label().to_string(),
                    index: start + k,
                    value: buf[k],
                }));
            }
            start += len;
        }
    }
    Ok(None)
}

/// Step 2: delta statistics and ratios (Model Stock) and the non-float identity check.
pub(crate) fn analyze(plan: &mut Plan, inputs: &Inputs<'_>) -> Result<()> {
    let Some(stats) = prepare(plan, inputs)? else {
        return Ok(());
    };
    let n = plan.n;
    compute_grams(&mut plan.entries, inputs, stats.anchor, |e| {
        e.action == Action::Merged
    })?;
    derive_ratios(&mut plan.entries, n, stats.clamp_t, |_| true);
    Ok(())
}

/// What the Model Stock statistics need once the plan is checked.
#[derive(Clone, Copy)]
struct Stats<'a> {
    anchor: &'a dyn Source,
    clamp_t: bool,
}

/// The part of step 2 every method shares: the non-float check, and the fixed t of the
/// methods that have one. Returns what the statistics need, or `None` when there are none to
/// compute (not Model Stock, or no inputs).
fn prepare<'a>(plan: &mut Plan, inputs: &Inputs<'a>) -> Result<Option<Stats<'a>>> {
    let Some(reference) = inputs.reference() else {
        return Ok(None);
    };
    check_non_float(plan, inputs, reference)?;

    let clamp_t = match plan.method {
        Method::ModelStock { clamp_t } => clamp_t,
        ref m => {
            let t = m.fixed_t(plan.n);
            for e in plan
                .entries
                .iter_mut()
                .filter(|e| e.action == Action::Merged)
            {
                e.t = t;
            }
            return Ok(None);
        }
    };
    let Some(anchor) = inputs.anchor else {
        return Err(MergeError::MissingAnchor {
            method: plan.method.name(),
        });
    };
    Ok(Some(Stats { anchor, clamp_t }))
}

/// Delta Gram of every entry `select` picks (in parallel over all their chunks), and the
/// check that each is finite: the first entry (in order) with a non-finite input is the error.
fn compute_grams(
    entries: &mut [Entry],
    inputs: &Inputs<'_>,
    anchor: &dyn Source,
    select: impl Fn(&Entry) -> bool,
) -> Result<()> {
    let n = inputs.models.len();
    let items: Vec<(usize, usize, usize)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| select(e))
        .flat_map(|(i, e)| {
            let numel = e.info.numel();
            (0..numel)
                .step_by(CHUNK)
                .map(move |s| (i, s, CHUNK.min(numel - s)))
        })
        .collect();
    let partials: Vec<DeltaGram> = {
        let entries = &*entries;
        items
            .par_iter()
            .map(|&(i, start, len)| gram_chunk(inputs, anchor, &entries[i], start, len))
            .collect::<Result<_>>()?
    };
    // Summed in a fixed order, so the result does not depend on the number of threads.
    for e in entries.iter_mut().filter(|e| select(e)) {
        e.gram = Some(DeltaGram::new(n));
    }
    for (&(i, _, _), g) in items.iter().zip(&partials) {
        if let Some(acc) = entries[i].gram.as_mut() {
            acc.add(g);
        }
    }

    for e in entries.iter().filter(|e| select(e)) {
        if e.gram.as_ref().is_some_and(|g| !g.is_finite()) {
            return Err(non_finite_error(e, inputs, Some(anchor), true, f64::NAN));
        }
    }
    Ok(())
}

/// cos, t and flags of every merged entry `select` picks whose Gram is known. A group's ratio
/// comes from the sum of all its members' Grams (exactly the Gram of their concatenation), so
/// every member must have one by now; an ungrouped tensor's comes from its own.
fn derive_ratios(entries: &mut [Entry], n: usize, clamp_t: bool, select: impl Fn(&Entry) -> bool) {
    let mut group_grams: BTreeMap<&str, DeltaGram> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.action == Action::Merged) {
        if let (Some(key), Some(g)) = (e.group.as_deref(), e.gram.as_ref()) {
            group_grams
                .entry(key)
                .or_insert_with(|| DeltaGram::new(n))
                .add(g);
        }
    }
    let ratios: BTreeMap<String, (f64, bool)> = group_grams
        .into_iter()
        .map(|(k, g)| (k.to_string(), (g.mean_cos(), g.all_zero())))
        .collect();

    for e in entries
        .iter_mut()
        .filter(|e| e.action == Action::Merged && e.t.is_none() && select(e))
    {
        let Some(own) = e.gram.as_ref() else { continue };
        let (cos, ratio_all_zero) = match e.group.as_deref().and_then(|k| ratios.get(k)) {
            Some(&(c, z)) => (c, z),
            None => (own.mean_cos(), own.all_zero()),
        };
        let raw_t = model_stock_ratio(n, cos);
        let t = if clamp_t {
            raw_t.clamp(0.0, 1.0)
        } else {
            raw_t
        };
        e.cos = Some(cos);
        e.t = Some(t);
        if t != raw_t {
            e.t_unclamped = Some(raw_t);
            e.flags.push(Flag::Clamped);
        }
        if own.any_zero() {
            e.flags.push(Flag::ZeroNorm);
        }
        if own.all_zero() {
            // w_H = t·w0 + (1 − t)·w0 = w0 whatever t is: copy the stored values exactly.
            e.flags.push(Flag::Identical);
            e.action = Action::Copied;
        } else if cos <= 0.0 && !ratio_all_zero {
            e.flags.push(Flag::NegativeCos);
        }
    }
}

/// Steps 2 and 3 interleaved, for outputs that only become visible once complete (the atomic
/// file writer): each ungrouped tensor's statistics are computed right before its output, so
/// the writer thread keeps putting earlier tensors into the page cache while later ones are
/// analysed, and a tensor's inputs are often still in cache when its output is computed.
/// Grouped tensors need all members first, so their statistics come up front. An input error
/// still stops the merge before anything is visible; only the hidden temporary file, which
/// the writer removes on error, can exist by then. Same results, bit for bit, as
/// [`analyze`] followed by [`write`].
pub(crate) fn analyze_and_write(
    plan: &mut Plan,
    inputs: &Inputs<'_>,
    sink: &mut (dyn Sink + Send),
) -> Result<()> {
    let Some(stats) = prepare(plan, inputs)? else {
        return write_impl(plan, inputs, sink, None);
    };
    let n = plan.n;
    let grouped = |e: &Entry| e.action == Action::Merged && e.group.is_some();
    compute_grams(&mut plan.entries, inputs, stats.anchor, grouped)?;
    derive_ratios(&mut plan.entries, n, stats.clamp_t, grouped);
    write_impl(plan, inputs, sink, Some(stats))
}

/// Non-float tensors are copied from the reference, which is only right if every input agrees.
fn check_non_float(plan: &Plan, inputs: &Inputs<'_>, reference: &dyn Source) -> Result<()> {
    let mut sa = Vec::new();
    let mut sb = Vec::new();
    for e in plan.entries.iter().filter(|e| !e.info.dtype.is_float()) {
        let total = e.info.byte_len();
        for src in inputs.all().skip(1) {
            let Some(idx) = src.find(&e.info.name) else {
                continue;
            };
            let mut off = 0;
            while off < total {
                let len = (WINDOW * 4).min(total - off);
                let a = reference.bytes(e.ref_idx, off..off + len, &mut sa)?;
                let b = src.bytes(idx, off..off + len, &mut sb)?;
                if a != b {
                    return Err(MergeError::NonFloatDiffers {
                        tensor: e.info.name.clone(),
                        dtype: e.info.dtype,
                        file_a: reference.label().to_string(),
                        file_b: src.label().to_string(),
                    });
                }
                off += len;
            }
        }
    }
    Ok(())
}

/// Where step 3 puts the output tensors.
pub(crate) trait Sink {
    /// Whether bytes may be passed through unchanged (file output in the tensor's dtype).
    fn accepts_raw(&self) -> bool;
    fn begin(&mut self, idx: usize) -> Result<()>;
    fn put_f32(&mut self, values: &[f32]) -> Result<()>;
    fn put_raw(&mut self, bytes: &[u8]) -> Result<()>;
}

impl Sink for crate::writer::SafetensorsWriter {
    fn accepts_raw(&self) -> bool {
        true
    }
    fn begin(&mut self, idx: usize) -> Result<()> {
        crate::writer::SafetensorsWriter::begin(self, idx)
    }
    fn put_f32(&mut self, values: &[f32]) -> Result<()> {
        crate::writer::SafetensorsWriter::put_f32(self, values)
    }
    fn put_raw(&mut self, bytes: &[u8]) -> Result<()> {
        crate::writer::SafetensorsWriter::put_raw(self, bytes)
    }
}

/// Collects f32 output tensors in memory.
pub(crate) struct MemorySink {
    pub tensors: Vec<Tensor>,
    current: usize,
}

impl MemorySink {
    pub(crate) fn new(plan: &Plan) -> Self {
        MemorySink {
            tensors: plan
                .entries
                .iter()
                .map(|e| Tensor {
                    name: e.info.name.clone(),
                    shape: e.info.shape.clone(),
                    data: Vec::with_capacity(e.info.numel()),
                })
                .collect(),
            current: 0,
        }
    }
}

impl Sink for MemorySink {
    fn accepts_raw(&self) -> bool {
        false
    }
    fn begin(&mut self, idx: usize) -> Result<()> {
        self.current = idx;
        Ok(())
    }
    fn put_f32(&mut self, values: &[f32]) -> Result<()> {
        if let Some(t) = self.tensors.get_mut(self.current) {
            t.data.extend_from_slice(values);
        }
        Ok(())
    }
    fn put_raw(&mut self, _bytes: &[u8]) -> Result<()> {
        Err(MergeError::InvalidOption(
            "internal error: raw bytes sent to an in-memory merge".into(),
        ))
    }
}

/// What the computing side hands the writer thread, in output order.
enum Job<'a> {
    /// Tensor `idx` starts.
    Begin(usize),
    /// The first `len` values of a window buffer (which goes back to the pool once written).
    Values(Vec<f32>, usize),
    /// Raw bytes borrowed from a mapped input.
    Mapped(&'a [u8]),
    /// Raw bytes that had to be read.
    Read(Vec<u8>),
}

/// Output windows in flight (8 MiB). The queue has to cover the statistics of the largest
/// tensor, which are computed while the writer drains it; with 1–4 windows the writer ran dry
/// there (ViT-B/32: 64×3 → 0.37 s, 16×8 → 0.32 s under the same load).
const POOL: usize = 8;

/// Step 3: produce every output tensor, in the reference's order.
///
/// Putting data into the page cache costs the kernel about as much as computing it (it
/// allocates and fills a fresh page for every 4 KiB), and a file takes one write at a time, so
/// a dedicated thread does nothing but write while the rayon pool computes the next windows.
/// The two sides trade a fixed pool of window buffers (bounded memory, no allocation per
/// window); raw pass-through tensors from mapped inputs are queued as borrowed slices.
pub(crate) fn write(
    plan: &mut Plan,
    inputs: &Inputs<'_>,
    sink: &mut (dyn Sink + Send),
) -> Result<()> {
    write_impl(plan, inputs, sink, None)
}

/// [`write`]; with `stats`, a merged tensor whose ratio is still unknown gets its statistics
/// computed first (see [`analyze_and_write`]).
fn write_impl(
    plan: &mut Plan,
    inputs: &Inputs<'_>,
    sink: &mut (dyn Sink + Send),
    stats: Option<Stats<'_>>,
) -> Result<()> {
    let Some(reference) = inputs.reference() else {
        return Ok(());
    };
    let max_numel = plan
        .entries
        .iter()
        .map(|e| e.info.numel())
        .max()
        .unwrap_or(0);
    let window = WINDOW.min(max_numel);
    let accepts_raw = sink.accepts_raw();
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job<'_>>(4 * POOL);
    let (pool_tx, pool_rx) = std::sync::mpsc::sync_channel::<Vec<f32>>(POOL);
    for _ in 0..POOL {
        // Cannot fail: the receiver is alive and the channel has room for POOL buffers.
        let _ = pool_tx.send(vec![0f32; window]);
    }
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<()> {
            // Owns the only pool sender: when this thread ends (done or failed), the producer's
            // wait for a free buffer ends too instead of blocking forever.
            let pool_tx = pool_tx;
            for job in job_rx {
                match job {
                    Job::Begin(idx) => sink.begin(idx)?,
                    Job::Values(buf, len) => {
                        sink.put_f32(&buf[..len])?;
                        let _ = pool_tx.send(buf);
                    }
                    Job::Mapped(bytes) => sink.put_raw(bytes)?,
                    Job::Read(bytes) => sink.put_raw(&bytes)?,
                }
            }
            Ok(())
        });
        let produced = produce(
            plan,
            inputs,
            reference,
            stats,
            accepts_raw,
            &job_tx,
            &pool_rx,
        );
        // Ends the writer's loop once it has written everything queued.
        drop(job_tx);
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A write error also stops production (a closed channel), so it is the real cause.
        written.and(produced)
    })
}

/// The producing half of [`write`]: computes windows into pooled buffers and queues them (and
/// raw tensors) for the writer. Stops quietly when the writer has gone (it reports why).
fn produce<'a>(
    plan: &mut Plan,
    inputs: &Inputs<'a>,
    reference: &'a dyn Source,
    stats: Option<Stats<'_>>,
    accepts_raw: bool,
    jobs: &std::sync::mpsc::SyncSender<Job<'a>>,
    pool: &std::sync::mpsc::Receiver<Vec<f32>>,
) -> Result<()> {
    let n = plan.n as f64;
    let mut scratch = Vec::new();
    for ei in 0..plan.entries.len() {
        if let Some(st) = stats {
            let entries = &mut plan.entries[ei..=ei];
            let pending = |e: &Entry| e.action == Action::Merged && e.gram.is_none();
            if pending(&entries[0]) {
                compute_grams(entries, inputs, st.anchor, pending)?;
                derive_ratios(entries, plan.n, st.clamp_t, |_| true);
            }
        }
        let e = &plan.entries[ei];
        let (c_mean, c_anchor) = match e.action {
            Action::Merged => {
                let t = e.t.unwrap_or(1.0);
                (t / n, 1.0 - t)
            }
            Action::Averaged => (1.0 / n, 0.0),
            Action::Anchor | Action::Copied => (0.0, 1.0),
        };
        if jobs.send(Job::Begin(ei)).is_err() {
            return Ok(());
        }
        let passthrough = c_mean == 0.0 && c_anchor == 1.0;
        let numel = e.info.numel();
        if numel == 0 || (passthrough && accepts_raw && e.out_dtype == e.info.dtype) {
            let total = e.info.byte_len();
            let mut off = 0;
            while off < total {
                let len = (WINDOW * 4).min(total - off);
                let job = match reference.mapped_bytes(e.ref_idx, off..off + len) {
                    Some(bytes) => Job::Mapped(bytes),
                    None => Job::Read(
                        reference
                            .bytes(e.ref_idx, off..off + len, &mut scratch)?
                            .to_vec(),
                    ),
                };
                if jobs.send(job).is_err() {
                    return Ok(());
                }
                off += len;
            }
            continue;
        }
        let mut start = 0;
        while start < numel {
            let len = WINDOW.min(numel - start);
            let Ok(mut buf) = pool.recv() else {
                return Ok(());
            };
            // One window, computed in parallel chunks.
            let finite = buf[..len]
                .par_chunks_mut(CHUNK)
                .enumerate()
                .map(|(ci, chunk)| {
                    let at = start + ci * CHUNK;
                    combine_chunk(inputs, reference, e, at, chunk, c_mean, c_anchor)
                })
                .try_reduce(|| true, |a, b| Ok(a && b))?;
            if !finite {
                // Only the inputs with a non-zero weight can have made the window non-finite.
                let anchor = (c_anchor != 0.0).then_some(reference);
                let t = e.t.unwrap_or(f64::NAN);
                return Err(non_finite_error(e, inputs, anchor, c_mean != 0.0, t));
            }
            if jobs.send(Job::Values(buf, len)).is_err() {
                return Ok(());
            }
            start += len;
        }
    }
    Ok(())
}

/// The report of a planned (and possibly written) merge.
pub(crate) fn report(
    plan: &Plan,
    inputs: &Inputs<'_>,
    opts: &MergeOptions,
    output: Option<String>,
) -> MergeReport {
    let tensors: Vec<TensorReport> = plan
        .entries
        .iter()
        .map(|e| {
            let mut flags = e.flags.clone();
            flags.sort();
            flags.dedup();
            TensorReport {
                name: e.info.name.clone(),
                group: e.group.clone(),
                shape: e.info.shape.clone(),
                numel: e.info.numel(),
                dtype: e.info.dtype,
                out_dtype: e.out_dtype,
                action: e.action,
                cos: e.cos,
                angle_deg: e.cos.map(angle_deg),
                t: e.t,
                t_unclamped: e.t_unclamped,
                delta_norms: e.gram.as_ref().map(|g| g.norms()).unwrap_or_default(),
                flags,
            }
        })
        .collect();

    let merged_t: Vec<f64> = tensors
        .iter()
        .filter(|t| t.action == Action::Merged)
        .filter_map(|t| t.t)
        .collect();
    let count = |a: Action| tensors.iter().filter(|t| t.action == a).count();
    let flagged = |f: Flag| tensors.iter().filter(|t| t.has(f)).count();
    let mut ratio_keys = std::collections::BTreeSet::new();
    let mut ungrouped = 0;
    for t in tensors.iter().filter(|t| t.action == Action::Merged) {
        match &t.group {
            Some(g) => {
                ratio_keys.insert(g.as_str());
            }
            None => ungrouped += 1,
        }
    }
    let summary = MergeSummary {
        method: plan.method.name().to_string(),
        n_models: plan.n,
        anchor: inputs.anchor.map(|a| a.label().to_string()),
        models: inputs
            .models
            .iter()
            .map(|m| m.label().to_string())
            .collect(),
        output,
        options: opts.clone(),
        tensors: tensors.len(),
        params: tensors.iter().map(|t| t.numel as u64).sum(),
        merged: count(Action::Merged),
        averaged: count(Action::Averaged),
        anchor_kept: count(Action::Anchor),
        copied: count(Action::Copied),
        ratio_groups: ungrouped + ratio_keys.len(),
        t_min: merged_t.iter().copied().reduce(f64::min),
        t_mean: (!merged_t.is_empty())
            .then(|| merged_t.iter().sum::<f64>() / merged_t.len() as f64),
        t_max: merged_t.iter().copied().reduce(f64::max),
        cos_le_zero: flagged(Flag::NegativeCos),
        zero_norm: flagged(Flag::ZeroNorm),
        clamped: flagged(Flag::Clamped),
    };
    MergeReport { summary, tensors }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_combine_is_bit_identical_to_the_baseline() {
        if !crate::simd::has_avx2() {
            return;
        }
        let len = 1003;
        let wave = |seed: f32| -> Vec<f32> {
            (0..len)
                .map(|k| (k as f32 * 0.37 + seed).sin() * 10f32.powi(k as i32 % 9 - 4))
                .collect()
        };
        let ms: Vec<Vec<f32>> = (0..4).map(|i| wave(i as f32)).collect();
        let a = wave(7.0);
        let refs: Vec<&[f32]> = ms.iter().map(Vec::as_slice).collect();
        let (c_mean, c_anchor) = (0.913_457_f64 / 3.0, 1.0 - 0.913_457_f64);
        for anchor in [Some(a.as_slice()), None] {
            let mut base = vec![0f32; len];
            let mut fast = vec![0f32; len];
            combine_fixed_body::<3>(&refs[..3], anchor, &mut base, c_mean, c_anchor);
            combine_fixed::<3>(&refs[..3], anchor, &mut fast, c_mean, c_anchor);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&base), bits(&fast));
        }
        let mut bad = a.clone();
        bad[517] = f32::NAN;
        assert!(all_finite(&a) && !all_finite(&bad));
    }
}
