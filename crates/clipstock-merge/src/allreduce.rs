//! The all-reduce form of the Model Stock merge: N processes (e.g. MPI ranks) each hold one
//! fine-tuned model w_i and the anchor w0, and none of them ever holds the other N − 1 models.
//!
//! Per ratio group (one tensor, or several tensors that share one ratio like the engine's
//! groups; norms are over the concatenation of the members):
//!
//! 1. each process builds its [`Contribution`] locally ([`Contribution::local`]): with
//!    d_i = w_i − w0 (rounded to f32, as the gather form does) and u_i = d_i/‖d_i‖ (0 when
//!    ‖d_i‖ = 0), it holds w_i, u_i and ‖u_i‖², all as f64, plus its ‖d_i‖² per member in its
//!    own slots of an N-row table and a 1 in its own presence slot;
//! 2. the processes sum their contributions element-wise: an in-place f64 `MPI_SUM`
//!    all-reduce of [`Contribution::as_mut_slice`] (what clipstock-train's
//!    `Collective::sum_f64` takes), or [`Contribution::add`] in one process;
//! 3. every process calls [`finish`] on the sum. Since Σ_{i≠j}⟨u_i,u_j⟩ = ‖Σu_i‖² − Σ‖u_i‖²,
//!    the mean pairwise cosine is (‖Σu_i‖² − Σ‖u_i‖²)/(N(N − 1)), t is
//!    [`model_stock_ratio`]`(N, cos)` and w_H = t·(Σw_i)/N + (1 − t)·w0.
//!
//! ```
//! use clipstock_merge::TensorRef;
//! use clipstock_merge::allreduce::{Contribution, Layout, finish};
//!
//! let shape = [3];
//! let w0 = [0.0f32, 1.0, 2.0];
//! let models = [[0.5f32, 1.0, 2.0], [0.25f32, 1.5, 2.0]];
//! let anchor = [TensorRef { name: "w", shape: &shape, data: &w0 }];
//! // What an all-reduce does, in one process. Rank r of an MPI job would instead call
//! // `Contribution::local(r, 2, &anchor, &its_model)?` and sum `c.as_mut_slice()` in place.
//! let mut sum = Contribution::zeros(Layout::new(2, vec![3]));
//! for (rank, m) in models.iter().enumerate() {
//!     let model = [TensorRef { name: "w", shape: &shape, data: m }];
//!     sum.add(&Contribution::local(rank, 2, &anchor, &model)?)?;
//! }
//! let merged = finish(&anchor, &sum, None, false)?;
//! assert!(merged.t > 0.0 && merged.t < 1.0);
//! # Ok::<(), clipstock_merge::MergeError>(())
//! ```
//!
//! # Buffer layout
//!
//! A contribution is one flat `Vec<f64>` (see [`Layout`]) so that a single all-reduce moves
//! everything: `[presence: N][‖d‖² table: N × M][Σ‖u_i‖²: 1][Σw: L][Σu: L]` for M members of
//! L elements in all. The presence slots and the norm table get exactly one non-zero addend
//! per slot, so their sums are exact in any order; [`finish`] rejects a sum in which some rank
//! is missing or counted twice. Several groups may be packed into one larger all-reduce by
//! concatenating their flat buffers; the caller then cuts them apart again
//! ([`Contribution::from_flat`]).
//!
//! # How it differs from the gather form ([`crate::model_stock_group`])
//!
//! - **COS_EPS.** The gather form divides each pair's dot product by ‖d_i‖‖d_j‖ + [`COS_EPS`];
//!   that ε does not factor into per-process scalings, so no all-reduce of one vector per
//!   process reproduces it. The ε-free mean ([`AllReduceMerge::cos_without_eps`]) exceeds
//!   each pair's gather-form cosine by the factor 1/r_ij = 1 + ε/(‖d_i‖‖d_j‖): about 1e-8
//!   relative only when the delta norms are near 1. For a 768-element bias whose deltas are
//!   ~1e-4 per element (‖d‖ ≈ 3e-3) the tests measure 3e-4 to 1.3e-3 relative.
//!
//!   [`finish`] therefore multiplies by r̄, the mean of r_ij over the non-zero pairs, which it
//!   knows from the all-reduced norm table. That is exact for N = 2 (one pair) and whenever
//!   all non-zero ‖d_i‖‖d_j‖ are equal. Otherwise it is off by a covariance,
//!   (1/P)·Σ(c_ij − c̄)(r_ij − r̄) over P = N(N − 1)/2 pairs, which
//!   [`AllReduceMerge::eps_gap_bound`] = (2/P)·Σ|r_ij − r̄| bounds (a worst case; the tests
//!   measure 80–300× below it). Measured |Δcos| against the gather form: ≤ 1.3e-15 for N = 2
//!   (outputs bit-identical);
//!   for N = 3, 5, ≤ 6e-11 with delta norms 0.5–2 (3,000 elements), ≤ 1e-8 with norms
//!   0.05–0.7 (24–576 elements), and ≤ 3.6e-6 (|Δt| ≤ 3.2e-6) with norms 3e-3 to 1e-2, where
//!   the ε-free cosine is off by up to 4.9e-4. A smaller residual would cost more traffic: a
//!   series in ε/(‖d_i‖‖d_j‖) needs one more all-reduced vector per term. Since Δt multiplies
//!   mean(w_i) − w0, the merged weights move by Δt·|mean − w0| plus one f32 rounding. That is
//!   at most 2 f32 ulps of the weights in the tests with norms ≥ 0.05, and up to 18 ulps of
//!   near-zero weights in the 3e-3 case.
//! - **Rounding.** The cosine comes from ‖Σu‖² − Σ‖u_i‖², where ‖Σu‖² ≤ N². It loses about
//!   N²·2^-53 times the summation's error growth, as the gather form's f64 Gram does: around
//!   1e-16 absolute in cos here, far below the ε effect. t inherits the error of cos times
//!   dt/dcos = N(1 + 1e-8)/((N − 1)cos + 1 + 1e-8)². That factor grows without bound as cos
//!   approaches its minimum −1/(N − 1).
//! - **Σw** sums f32 values in f64, which is exact (so equal to the gather form's sum, in any
//!   order, for any N) unless an element's values across models span more than about
//!   2^(29 − log2 N) in magnitude; then it may differ in the last f64 bit, which can move the
//!   f32 output by one ulp. With equal t, the output is bit-identical to the gather form's.
//! - **Order.** For N = 2 an all-reduce adds two addends, and IEEE addition commutes, so every
//!   order gives the same bits. For N ≥ 3, Σu (and Σ‖u_i‖²) depend on the summation order in
//!   the last bits; every rank must therefore receive the same summed buffer to write
//!   identical merges. MPI's reduction algorithms deliver one result to every rank in
//!   practice (the standard recommends, but does not mandate, it); if in doubt, finish on one
//!   rank and broadcast. [`finish`] itself is deterministic for a given buffer, whatever the
//!   number of threads.
//! - **Memory and traffic.** The sums are f64, so one group's all-reduce moves 16 bytes per
//!   parameter (Σw and Σu), four times the f32 group; merging group by group keeps every
//!   process at a few group-sized buffers besides its own model.

use std::ops::Range;

use rayon::prelude::*;

use crate::dtype::DType;
use crate::engine::CHUNK;
use crate::error::{MergeError, Result};
use crate::ratio::{COS_EPS, angle_deg, model_stock_ratio};
use crate::report::{Action, Flag, TensorReport};
use crate::source::{Tensor, TensorRef};

/// The structure of a contribution's flat buffer: N processes, and the element count of each
/// member tensor of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    n: usize,
    lens: Vec<usize>,
}

impl Layout {
    /// The layout for `n` processes and members of `member_lens` elements.
    pub fn new(n: usize, member_lens: Vec<usize>) -> Self {
        Layout {
            n,
            lens: member_lens,
        }
    }

    /// Number of processes (fine-tuned models) N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Element count of each member tensor.
    pub fn member_lens(&self) -> &[usize] {
        &self.lens
    }

    /// Elements of the group, over all members.
    pub fn numel(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Length of the flat f64 buffer: N + N·M + 1 + 2·numel.
    pub fn flat_len(&self) -> usize {
        self.n + self.n * self.lens.len() + 1 + 2 * self.numel()
    }

    fn presence(&self) -> Range<usize> {
        0..self.n
    }

    fn norm_sq_slot(&self, rank: usize, member: usize) -> usize {
        self.n + rank * self.lens.len() + member
    }

    fn u_norm_sq_slot(&self) -> usize {
        self.n + self.n * self.lens.len()
    }

    fn sum_w(&self) -> Range<usize> {
        let s = self.u_norm_sq_slot() + 1;
        s..s + self.numel()
    }

    fn sum_u(&self) -> Range<usize> {
        let s = self.sum_w().end;
        s..s + self.numel()
    }

    /// Offsets of each member within Σw (and Σu).
    fn member_ranges(&self) -> Vec<Range<usize>> {
        let mut at = 0;
        self.lens
            .iter()
            .map(|&l| {
                let r = at..at + l;
                at += l;
                r
            })
            .collect()
    }
}

/// One process's share of a group's all-reduce, or the sum of several (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    layout: Layout,
    buf: Vec<f64>,
}

impl Contribution {
    /// The identity of [`Contribution::add`]: the starting point of a sum.
    pub fn zeros(layout: Layout) -> Self {
        let buf = vec![0.0; layout.flat_len()];
        Contribution { layout, buf }
    }

    /// Wraps a flat buffer (e.g. one cut out of a larger all-reduce) in `layout`.
    pub fn from_flat(layout: Layout, flat: Vec<f64>) -> Result<Self> {
        if flat.len() != layout.flat_len() {
            return Err(MergeError::InvalidOption(format!(
                "all-reduce buffer holds {} values, its layout needs {}",
                flat.len(),
                layout.flat_len()
            )));
        }
        Ok(Contribution { layout, buf: flat })
    }

    /// The contribution of process `rank` (0-based, of `n`) to one ratio group: `anchor` and
    /// `model` list the group's member tensors, in the same order on every process.
    ///
    /// Errors: fewer than 2 processes, `rank ≥ n`, no members, members that differ in name or
    /// shape between `anchor` and `model` (or appear twice), data that does not fill its
    /// shape, and non-finite values (named `anchor` or `model {rank + 1}`, as
    /// [`crate::merge_tensors`] names them).
    pub fn local(
        rank: usize,
        n: usize,
        anchor: &[TensorRef<'_>],
        model: &[TensorRef<'_>],
    ) -> Result<Self> {
        if n < 2 {
            return Err(MergeError::TooFewModels {
                method: "model_stock",
                need: 2,
                got: n,
            });
        }
        if rank >= n {
            return Err(MergeError::InvalidOption(format!(
                "rank {rank} is out of range for {n} processes"
            )));
        }
        let label = format!("model {}", rank + 1);
        check_members(anchor, "anchor")?;
        check_members(model, &label)?;
        if anchor.len() != model.len() {
            return Err(MergeError::InvalidOption(format!(
                "the anchor's group has {} member(s), `{label}`'s has {}",
                anchor.len(),
                model.len()
            )));
        }
        for (a, m) in anchor.iter().zip(model) {
            if a.name != m.name {
                return Err(MergeError::MissingTensor {
                    tensor: a.name.to_string(),
                    present_in: "anchor".to_string(),
                    missing_from: label,
                });
            }
            if a.shape != m.shape {
                return Err(MergeError::ShapeMismatch {
                    tensor: a.name.to_string(),
                    file_a: "anchor".to_string(),
                    shape_a: a.shape.into(),
                    file_b: label,
                    shape_b: m.shape.into(),
                });
            }
        }

        let layout = Layout::new(n, anchor.iter().map(|a| a.data.len()).collect());
        let mut c = Contribution::zeros(layout);
        let norms_sq: Vec<f64> = anchor
            .iter()
            .zip(model)
            .map(|(a, m)| delta_norm_sq(a.data, m.data))
            .collect();
        for ((a, m), nsq) in anchor.iter().zip(model).zip(&norms_sq) {
            if !nsq.is_finite() {
                return Err(non_finite_input(a, m, &label));
            }
        }
        let norm = norms_sq.iter().sum::<f64>().sqrt();
        if !norm.is_finite() {
            // Every member's sum is finite but their total overflowed: no input value is to
            // blame, as with a delta that overflows f32.
            return Err(MergeError::NonFiniteOutput {
                tensor: anchor[0].name.to_string(),
                t: f64::NAN,
            });
        }

        let layout = c.layout.clone();
        let (head, tail) = c.buf.split_at_mut(layout.sum_w().start);
        head[rank] = 1.0;
        for (k, nsq) in norms_sq.iter().enumerate() {
            head[layout.norm_sq_slot(rank, k)] = *nsq;
        }
        let (sum_w, sum_u) = tail.split_at_mut(layout.numel());
        let mut u_norm_sq = 0.0;
        for ((a, m), r) in anchor.iter().zip(model).zip(layout.member_ranges()) {
            u_norm_sq += fill_local(a.data, m.data, norm, &mut sum_w[r.clone()], &mut sum_u[r]);
        }
        head[layout.u_norm_sq_slot()] = u_norm_sq;
        Ok(c)
    }

    /// The layout of [`Contribution::as_slice`].
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The flat buffer (see [`Layout`]).
    pub fn as_slice(&self) -> &[f64] {
        &self.buf
    }

    /// The flat buffer, for an in-place all-reduce: after summing it over the N processes
    /// (`MPI_Allreduce(MPI_IN_PLACE, buf, len, MPI_DOUBLE, MPI_SUM, comm)`) this contribution
    /// is the sum [`finish`] needs.
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.buf
    }

    /// The flat buffer, owned.
    pub fn into_flat(self) -> Vec<f64> {
        self.buf
    }

    /// Adds `other` element-wise, as an all-reduce sum does. Both must have the same layout.
    pub fn add(&mut self, other: &Contribution) -> Result<()> {
        if self.layout != other.layout {
            return Err(MergeError::InvalidOption(format!(
                "cannot add contributions of different layouts (N = {}, members {:?} vs N = {}, \
                 members {:?})",
                self.layout.n, self.layout.lens, other.layout.n, other.layout.lens
            )));
        }
        for (a, b) in self.buf.iter_mut().zip(&other.buf) {
            *a += b;
        }
        Ok(())
    }

    /// Σw over the contributing processes (all members, concatenated).
    pub fn sum_w(&self) -> &[f64] {
        &self.buf[self.layout.sum_w()]
    }

    /// Σu over the contributing processes (all members, concatenated).
    pub fn sum_u(&self) -> &[f64] {
        &self.buf[self.layout.sum_u()]
    }

    /// Σ‖u_i‖² over the contributing processes (≈ the number of non-zero deltas).
    pub fn sum_u_norm_sq(&self) -> f64 {
        self.buf[self.layout.u_norm_sq_slot()]
    }

    /// How many times each rank has been added (1 each in a complete sum).
    pub fn presence(&self) -> &[f64] {
        &self.buf[self.layout.presence()]
    }

    /// ‖d_rank‖² of member `member`, as that rank computed it (0 if it has not been added).
    pub fn delta_norm_sq(&self, rank: usize, member: usize) -> Option<f64> {
        (rank < self.layout.n && member < self.layout.lens.len())
            .then(|| self.buf[self.layout.norm_sq_slot(rank, member)])
    }
}

/// The merge of one ratio group from the summed contributions.
#[derive(Debug, Clone, PartialEq)]
pub struct AllReduceMerge {
    /// w_H per member, f32, with the anchor's names and shapes.
    pub tensors: Vec<Tensor>,
    /// Per member, the report line the gather form ([`crate::model_stock_group`] or
    /// [`crate::merge_tensors`]) gives (in-memory, so dtypes F32).
    pub reports: Vec<TensorReport>,
    /// The mean pairwise cosine applied: ε-matched to the gather form, clamped to [−1, 1].
    pub cos: f64,
    /// (‖Σu‖² − Σ‖u_i‖²)/(N(N − 1)), the paper's mean cosine without the reference's ε (not
    /// clamped).
    pub cos_without_eps: f64,
    /// A bound on |cos − the gather form's cosine| from the ε alone (rounding comes on top;
    /// see the module docs). 0 when all non-zero ‖d_i‖‖d_j‖ are equal.
    pub eps_gap_bound: f64,
    /// The ratio applied (after `clamp_t`).
    pub t: f64,
    /// The ratio before `clamp_t`.
    pub t_unclamped: f64,
    /// ‖d_i‖ over the whole group, per rank.
    pub delta_norms: Vec<f64>,
}

/// Merges one ratio group from the sum over all N processes of their contributions. `anchor`
/// lists the members as given to [`Contribution::local`]; `group` is only the label written
/// into the reports (`None` for an ungrouped tensor, as the gather form reports it).
///
/// Errors: an anchor that does not match the layout, a sum in which some rank is missing or
/// counted twice, non-finite sums (a damaged buffer), and a non-finite merged value (an
/// extrapolation with huge t: use `clamp_t`).
pub fn finish(
    anchor: &[TensorRef<'_>],
    sum: &Contribution,
    group: Option<&str>,
    clamp_t: bool,
) -> Result<AllReduceMerge> {
    let layout = &sum.layout;
    let n = layout.n;
    check_members(anchor, "anchor")?;
    if anchor.len() != layout.lens.len()
        || anchor
            .iter()
            .zip(&layout.lens)
            .any(|(a, &l)| a.data.len() != l)
    {
        return Err(MergeError::InvalidOption(format!(
            "the anchor's members hold {:?} elements, the summed contribution's {:?}",
            anchor.iter().map(|a| a.data.len()).collect::<Vec<_>>(),
            layout.lens
        )));
    }
    let first = anchor[0].name;
    if n < 2 {
        return Err(MergeError::TooFewModels {
            method: "model_stock",
            need: 2,
            got: n,
        });
    }
    let off: Vec<String> = sum
        .presence()
        .iter()
        .enumerate()
        .filter(|&(_, &p)| p != 1.0)
        .map(|(r, p)| format!("rank {r} × {p}"))
        .collect();
    if !off.is_empty() {
        return Err(MergeError::InvalidOption(format!(
            "the summed contribution of `{first}` must hold each of the {n} ranks once: {}",
            off.join(", ")
        )));
    }
    if !sum.buf.iter().all(|v| v.is_finite()) {
        return Err(MergeError::InvalidOption(format!(
            "the summed contribution of `{first}` holds non-finite values (damaged buffer?)"
        )));
    }

    let m = layout.lens.len();
    let norm_sq = |rank: usize, member: usize| sum.buf[layout.norm_sq_slot(rank, member)];
    let group_norm_sq: Vec<f64> = (0..n)
        .map(|i| (0..m).map(|k| norm_sq(i, k)).sum())
        .collect();
    let pairs = n * (n - 1) / 2;
    // r_ij = p/(p + ε): the factor by which the gather form's ε shrinks pair (i, j)'s cosine.
    let r: Vec<f64> = (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .filter(|&(i, j)| group_norm_sq[i] > 0.0 && group_norm_sq[j] > 0.0)
        .map(|(i, j)| {
            let p = (group_norm_sq[i] * group_norm_sq[j]).sqrt();
            p / (p + COS_EPS)
        })
        .collect();
    let cross = sum_sq(sum.sum_u()) - sum.sum_u_norm_sq();
    let cos_without_eps = cross / (n * (n - 1)) as f64;
    let (cos, eps_gap_bound) = if r.is_empty() {
        // Every pair has a zero delta: the gather form's pair cosines are all 0/(0 + ε).
        (0.0, 0.0)
    } else {
        let mean_r = r.iter().sum::<f64>() / r.len() as f64;
        let spread: f64 = r.iter().map(|x| (x - mean_r).abs()).sum();
        (
            (cos_without_eps * mean_r).clamp(-1.0, 1.0),
            2.0 * spread / pairs as f64,
        )
    };
    let t_unclamped = model_stock_ratio(n, cos);
    let t = if clamp_t {
        t_unclamped.clamp(0.0, 1.0)
    } else {
        t_unclamped
    };
    let group_all_zero = group_norm_sq.iter().all(|&v| v == 0.0);

    let mut tensors = Vec::with_capacity(m);
    let mut reports = Vec::with_capacity(m);
    for (k, (a, range)) in anchor.iter().zip(layout.member_ranges()).enumerate() {
        let own: Vec<f64> = (0..n).map(|i| norm_sq(i, k)).collect();
        let own_all_zero = own.iter().all(|&v| v == 0.0);
        let mut flags = Vec::new();
        if t != t_unclamped {
            flags.push(Flag::Clamped);
        }
        if own.contains(&0.0) {
            flags.push(Flag::ZeroNorm);
        }
        let (action, c_mean, c_anchor) = if own_all_zero {
            // Every model equals the anchor in this member: the gather form copies it.
            flags.push(Flag::Identical);
            (Action::Copied, 0.0, 1.0)
        } else {
            if cos <= 0.0 && !group_all_zero {
                flags.push(Flag::NegativeCos);
            }
            (Action::Merged, t / n as f64, 1.0 - t)
        };
        flags.sort();
        let mut data = vec![0f32; a.data.len()];
        let finite = combine(&sum.sum_w()[range], a.data, &mut data, c_mean, c_anchor);
        if !finite {
            return Err(MergeError::NonFiniteOutput {
                tensor: a.name.to_string(),
                t,
            });
        }
        tensors.push(Tensor {
            name: a.name.to_string(),
            shape: a.shape.to_vec(),
            data,
        });
        reports.push(TensorReport {
            name: a.name.to_string(),
            group: group.map(str::to_string),
            shape: a.shape.to_vec(),
            numel: a.data.len(),
            dtype: DType::F32,
            out_dtype: DType::F32,
            action,
            cos: Some(cos),
            angle_deg: Some(angle_deg(cos)),
            t: Some(t),
            t_unclamped: (t != t_unclamped).then_some(t_unclamped),
            delta_norms: own.iter().map(|v| v.sqrt()).collect(),
            flags,
        });
    }
    Ok(AllReduceMerge {
        tensors,
        reports,
        cos,
        cos_without_eps,
        eps_gap_bound,
        t,
        t_unclamped,
        delta_norms: group_norm_sq.iter().map(|v| v.sqrt()).collect(),
    })
}

/// A group needs members, each filling its shape, each named once.
fn check_members(members: &[TensorRef<'_>], label: &str) -> Result<()> {
    if members.is_empty() {
        return Err(MergeError::InvalidOption(
            "an all-reduce group needs at least one member tensor".to_string(),
        ));
    }
    for (k, t) in members.iter().enumerate() {
        let expected: usize = t.shape.iter().product();
        if expected != t.data.len() {
            return Err(MergeError::LengthMismatch {
                tensor: t.name.to_string(),
                file: label.to_string(),
                shape: t.shape.into(),
                expected,
                got: t.data.len(),
            });
        }
        if members[..k].iter().any(|o| o.name == t.name) {
            return Err(MergeError::DuplicateTensor {
                tensor: t.name.to_string(),
                file: label.to_string(),
            });
        }
    }
    Ok(())
}

/// The error for a member whose ‖d‖² is not finite: its first non-finite value, the anchor
/// searched first as the gather form does, or else an overflowing delta.
fn non_finite_input(anchor: &TensorRef<'_>, model: &TensorRef<'_>, label: &str) -> MergeError {
    for (src, file) in [(anchor, "anchor"), (model, label)] {
        if let Some(k) = src.data.iter().position(|v| !v.is_finite()) {
            return MergeError::NonFinite {
                tensor: src.name.to_string(),
                file: file.to_string(),
                index: k,
                value: src.data[k],
            };
        }
    }
    MergeError::NonFiniteOutput {
        tensor: anchor.name.to_string(),
        t: f64::NAN,
    }
}

/// Σ f64(f32(x − a))², non-finite exactly when some delta is. Per-chunk partial sums are added
/// in chunk order, so the result does not depend on the number of threads.
fn delta_norm_sq(a: &[f32], x: &[f32]) -> f64 {
    let parts: Vec<f64> = a
        .par_chunks(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .map(|(a, x)| {
            let mut acc = [0f64; 4];
            let (ab, at) = a.as_chunks::<4>();
            let (xb, xt) = x.as_chunks::<4>();
            for (av, xv) in ab.iter().zip(xb) {
                for l in 0..4 {
                    let d = f64::from(xv[l] - av[l]);
                    acc[l] += d * d;
                }
            }
            for (av, xv) in at.iter().zip(xt) {
                let d = f64::from(xv - av);
                acc[0] += d * d;
            }
            (acc[0] + acc[1]) + (acc[2] + acc[3])
        })
        .collect();
    parts.iter().sum()
}

/// Σ v², chunk-ordered like [`delta_norm_sq`].
fn sum_sq(v: &[f64]) -> f64 {
    let parts: Vec<f64> = v
        .par_chunks(CHUNK)
        .map(|c| {
            let mut acc = [0f64; 4];
            let (blocks, tail) = c.as_chunks::<4>();
            for b in blocks {
                for l in 0..4 {
                    acc[l] += b[l] * b[l];
                }
            }
            for x in tail {
                acc[0] += x * x;
            }
            (acc[0] + acc[1]) + (acc[2] + acc[3])
        })
        .collect();
    parts.iter().sum()
}

/// Writes w and u = d/‖d‖ (0 for a zero delta) of one member into its slots; returns Σu².
fn fill_local(a: &[f32], x: &[f32], norm: f64, w: &mut [f64], u: &mut [f64]) -> f64 {
    let parts: Vec<f64> = w
        .par_chunks_mut(CHUNK)
        .zip(u.par_chunks_mut(CHUNK))
        .zip(a.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
        .map(|((w, u), (a, x))| {
            let mut acc = 0f64;
            for (((w, u), av), xv) in w.iter_mut().zip(u.iter_mut()).zip(a).zip(x) {
                *w = f64::from(*xv);
                *u = if norm > 0.0 {
                    f64::from(xv - av) / norm
                } else {
                    0.0
                };
                acc += *u * *u;
            }
            acc
        })
        .collect();
    parts.iter().sum()
}

/// `out = f32(c_mean·Σw + c_anchor·w0)`, leaving out a term whose coefficient is 0 the way the
/// gather form does (it does not read those inputs), so that equal t gives equal bits, signed
/// zeros included. Returns whether every output is finite.
fn combine(sum_w: &[f64], anchor: &[f32], out: &mut [f32], c_mean: f64, c_anchor: f64) -> bool {
    out.par_chunks_mut(CHUNK)
        .zip(sum_w.par_chunks(CHUNK).zip(anchor.par_chunks(CHUNK)))
        .map(|(out, (s, a))| {
            for ((o, s), a) in out.iter_mut().zip(s).zip(a) {
                let s = if c_mean != 0.0 { *s } else { 0.0 };
                *o = if c_anchor != 0.0 {
                    (c_mean * s + c_anchor * f64::from(*a)) as f32
                } else {
                    (c_mean * s) as f32
                };
            }
            out.iter().all(|v| v.is_finite())
        })
        .collect::<Vec<bool>>()
        .into_iter()
        .all(|f| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one<'a>(shape: &'a [usize], data: &'a [f32]) -> [TensorRef<'a>; 1] {
        [TensorRef {
            name: "w",
            shape,
            data,
        }]
    }

    /// Model Stock of `anchor` and `models` (one flat tensor each) through the all-reduce form.
    fn merge(anchor: &[f32], models: &[Vec<f32>]) -> AllReduceMerge {
        let n = models.len();
        let shape = [anchor.len()];
        let a = one(&shape, anchor);
        let mut sum = Contribution::zeros(Layout::new(n, vec![anchor.len()]));
        for (rank, m) in models.iter().enumerate() {
            let c = Contribution::local(rank, n, &a, &one(&shape, m)).expect("local");
            sum.add(&c).expect("add");
        }
        assert_eq!(sum.presence(), vec![1.0; n]);
        finish(&a, &sum, None, false).expect("finish")
    }

    #[test]
    fn layout_slots_are_disjoint_and_cover_the_buffer() {
        let l = Layout::new(3, vec![4, 0, 2]);
        let mut seen = vec![0u8; l.flat_len()];
        for i in l.presence() {
            seen[i] += 1;
        }
        for r in 0..3 {
            for m in 0..3 {
                seen[l.norm_sq_slot(r, m)] += 1;
            }
        }
        seen[l.u_norm_sq_slot()] += 1;
        for i in l.sum_w().chain(l.sum_u()) {
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&c| c == 1), "{seen:?}");
        assert_eq!(l.member_ranges(), vec![0..4, 4..4, 4..6]);
    }

    #[test]
    fn hand_computed_three_models() {
        // d = (1, 0), (0, 1), (1, 1): pair cosines 0, 1/√2, 1/√2, so the ε-free mean is
        // √2/3; the gather form divides each by its norm product + 1e-8 instead.
        let models = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        let m = merge(&[0.0, 0.0], &models);
        assert!((m.cos_without_eps - 2f64.sqrt() / 3.0).abs() < 1e-15);
        let gather = 2.0 / (2f64.sqrt() + 1e-8) / 3.0;
        assert!((m.cos - gather).abs() <= m.eps_gap_bound + 1e-15);
        assert!(m.eps_gap_bound < 1e-8);
        assert_eq!(m.delta_norms, vec![1.0, 1.0, 2f64.sqrt()]);
        let t = model_stock_ratio(3, m.cos);
        assert_eq!(m.t, t);
        let w = (t / 3.0 * 2.0) as f32;
        assert_eq!(m.tensors[0].data, vec![w, w]);
    }

    #[test]
    fn results_do_not_depend_on_the_number_of_threads() {
        let len = 3 * CHUNK + 5;
        let wave =
            |s: f32| -> Vec<f32> { (0..len).map(|k| (k as f32 * 0.013 + s).sin()).collect() };
        let anchor = wave(0.0);
        let models = vec![wave(0.1), wave(0.2), wave(0.35)];
        let many = merge(&anchor, &models);
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool")
            .install(|| merge(&anchor, &models));
        assert_eq!(many, single);
    }
}
