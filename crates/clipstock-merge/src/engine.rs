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
//! few buffers per thread plus two output windows, whatever the checkpoint size. Step 2 has to finish
//! before step 3 starts because a group's ratio depends on all its members, which may be far
//! apart in the file; it also means every input error is found before the output is created.

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
/// Elements per output window handed to the sink (4 MiB of f32): bounds the output buffers.
const WINDOW: usize = 64 * CHUNK;

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
        let a = anchor.f32s(e.ref_idx, start, len, &mut abuf[0])?;
        let mut ms: Vec<&[f32]> = Vec::with_capacity(n);
        for ((m, &idx), buf) in inputs.models.iter().zip(&e.model_idx).zip(mbufs.iter_mut()) {
            ms.push(m.f32s(idx, start, len, buf)?);
        }
        let mut g = DeltaGram::new(n);
        g.accumulate_from(a, &ms);
        Ok(g)
    })
}

/// `out[k] = c_mean·Σ_i models[i][k] + c_anchor·anchor[k]` in f64, rounded once to f32.
/// Unrolled per N so that each output element is produced in one sweep over the inputs.
fn combine_fixed<const N: usize>(
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
            Some(reference.f32s(e.ref_idx, start, len, &mut abuf[0])?)
        } else {
            None
        };
        let mut ms: Vec<&[f32]> = Vec::with_capacity(n);
        for ((m, &idx), buf) in inputs.models[..n]
            .iter()
            .zip(&e.model_idx)
            .zip(mbufs.iter_mut())
        {
            ms.push(m.f32s(idx, start, len, buf)?);
        }
        combine_any(&ms, a, out, c_mean, c_anchor);
        Ok(all_finite(out))
    })
}

/// Finds the first non-finite input value of `e` among `sources` (tensor indices alongside).
fn locate_non_finite(e: &Entry, sources: &[(&dyn Source, usize)]) -> Result<Option<MergeError>> {
    let mut buf = vec![0f32; CHUNK];
    for (src, idx) in sources {
        let numel = src.tensors()[*idx].numel();
        let mut start = 0;
        while start < numel {
            let len = CHUNK.min(numel - start);
            src.read_f32(*idx, start, &mut buf[..len])?;
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
    let Some(reference) = inputs.reference() else {
        return Ok(());
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
            return Ok(());
        }
    };
    let Some(anchor) = inputs.anchor else {
        return Err(MergeError::MissingAnchor {
            method: plan.method.name(),
        });
    };
    let n = plan.n;

    let items: Vec<(usize, usize, usize)> = plan
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.action == Action::Merged)
        .flat_map(|(i, e)| {
            let numel = e.info.numel();
            (0..numel)
                .step_by(CHUNK)
                .map(move |s| (i, s, CHUNK.min(numel - s)))
        })
        .collect();
    let partials: Vec<DeltaGram> = {
        let entries = &plan.entries;
        items
            .par_iter()
            .map(|&(i, start, len)| gram_chunk(inputs, anchor, &entries[i], start, len))
            .collect::<Result<_>>()?
    };
    // Summed in a fixed order, so the result does not depend on the number of threads.
    for e in plan
        .entries
        .iter_mut()
        .filter(|e| e.action == Action::Merged)
    {
        e.gram = Some(DeltaGram::new(n));
    }
    for (&(i, _, _), g) in items.iter().zip(&partials) {
        if let Some(acc) = plan.entries[i].gram.as_mut() {
            acc.add(g);
        }
    }

    for e in plan.entries.iter().filter(|e| e.action == Action::Merged) {
        if e.gram.as_ref().is_some_and(|g| !g.is_finite()) {
            let mut sources: Vec<(&dyn Source, usize)> = vec![(anchor, e.ref_idx)];
            sources.extend(
                inputs
                    .models
                    .iter()
                    .copied()
                    .zip(e.model_idx.iter().copied()),
            );
            return Err(locate_non_finite(e, &sources)?.unwrap_or_else(|| {
                MergeError::NonFiniteOutput {
                    tensor: e.info.name.clone(),
                    t: f64::NAN,
                }
            }));
        }
    }

    // One Gram per ratio: a group's is the sum of its members' (exactly the Gram of their
    // concatenation), an ungrouped tensor's is its own.
    let mut group_grams: BTreeMap<&str, DeltaGram> = BTreeMap::new();
    for e in plan.entries.iter().filter(|e| e.action == Action::Merged) {
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

    for e in plan
        .entries
        .iter_mut()
        .filter(|e| e.action == Action::Merged)
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
    Ok(())
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
                let a = reference.bytes(e.ref_idx, off, len, &mut sa)?;
                let b = src.bytes(idx, off, len, &mut sb)?;
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

/// Output computed but not yet handed to the sink: which tensor it starts (if it is the first
/// window of one) and how many values of the buffer it fills.
struct Pending {
    begin: Option<usize>,
    len: usize,
}

fn flush(sink: &mut (dyn Sink + Send), pending: Option<Pending>, buf: &[f32]) -> Result<()> {
    if let Some(p) = pending {
        if let Some(idx) = p.begin {
            sink.begin(idx)?;
        }
        sink.put_f32(&buf[..p.len])?;
    }
    Ok(())
}

/// Computes one output window in parallel chunks; returns whether all values are finite.
fn compute_window(
    inputs: &Inputs<'_>,
    reference: &dyn Source,
    e: &Entry,
    start: usize,
    out: &mut [f32],
    c_mean: f64,
    c_anchor: f64,
) -> Result<bool> {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(ci, chunk)| {
            combine_chunk(
                inputs,
                reference,
                e,
                start + ci * CHUNK,
                chunk,
                c_mean,
                c_anchor,
            )
        })
        .try_reduce(|| true, |a, b| Ok(a && b))
}

/// Step 3: produce every output tensor, in the reference's order.
///
/// Writing into the page cache costs about as much as computing (the kernel allocates and
/// fills fresh pages), so the two are pipelined: window k is handed to the sink while window
/// k + 1 is computed, with two window buffers swapping roles.
pub(crate) fn write(plan: &Plan, inputs: &Inputs<'_>, sink: &mut (dyn Sink + Send)) -> Result<()> {
    let Some(reference) = inputs.reference() else {
        return Ok(());
    };
    let n = plan.n as f64;
    let max_numel = plan
        .entries
        .iter()
        .map(|e| e.info.numel())
        .max()
        .unwrap_or(0);
    let mut cur = vec![0f32; WINDOW.min(max_numel)];
    let mut prev = vec![0f32; WINDOW.min(max_numel)];
    let mut pending: Option<Pending> = None;
    let mut scratch = Vec::new();
    for (ei, e) in plan.entries.iter().enumerate() {
        let (c_mean, c_anchor) = match e.action {
            Action::Merged => {
                let t = e.t.unwrap_or(1.0);
                (t / n, 1.0 - t)
            }
            Action::Averaged => (1.0 / n, 0.0),
            Action::Anchor | Action::Copied => (0.0, 1.0),
        };
        let passthrough = c_mean == 0.0 && c_anchor == 1.0;
        let numel = e.info.numel();
        if numel == 0 || (passthrough && sink.accepts_raw() && e.out_dtype == e.info.dtype) {
            flush(sink, pending.take(), &prev)?;
            sink.begin(ei)?;
            let total = e.info.byte_len();
            let mut off = 0;
            while off < total {
                let len = (WINDOW * 4).min(total - off);
                let bytes = reference.bytes(e.ref_idx, off, len, &mut scratch)?;
                sink.put_raw(bytes)?;
                off += len;
            }
            continue;
        }
        let mut start = 0;
        while start < numel {
            let len = WINDOW.min(numel - start);
            let done = pending.take();
            let out = &mut cur[..len];
            let (written, computed) = rayon::join(
                || flush(sink, done, &prev),
                || compute_window(inputs, reference, e, start, out, c_mean, c_anchor),
            );
            written?;
            if !computed? {
                let mut sources: Vec<(&dyn Source, usize)> = Vec::new();
                if c_anchor != 0.0 {
                    sources.push((reference, e.ref_idx));
                }
                if c_mean != 0.0 {
                    sources.extend(
                        inputs
                            .models
                            .iter()
                            .copied()
                            .zip(e.model_idx.iter().copied()),
                    );
                }
                return Err(locate_non_finite(e, &sources)?.unwrap_or_else(|| {
                    MergeError::NonFiniteOutput {
                        tensor: e.info.name.clone(),
                        t: e.t.unwrap_or(f64::NAN),
                    }
                }));
            }
            std::mem::swap(&mut cur, &mut prev);
            pending = Some(Pending {
                begin: (start == 0).then_some(ei),
                len,
            });
            start += len;
        }
    }
    flush(sink, pending.take(), &prev)
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
