//! The gradient all-reduce of a run whose steps several processes share
//! (`run.ranks_per_seed` = K > 1): each process has the gradient of its share of the batch;
//! the mean over the processes is the gradient of the whole batch, and every process takes
//! the same clipping and AdamW step with it.
//!
//! The gradients travel through host memory as one f32 buffer in the module's visit order
//! (the same order on every process, since every process holds the same module). A process
//! whose whole share was unreadable still takes part, with zeros, so that no process waits
//! for one that skipped the collective.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::dist::Collective;

/// Nanoseconds this process spent in [`average_grads`] (host copies and the all-reduce):
/// what `clipstock bench --what train` reports under mpirun.
static SYNC_NANOS: AtomicU64 = AtomicU64::new(0);

/// Seconds spent averaging gradients so far, in this process.
pub fn sync_seconds() -> f64 {
    SYNC_NANOS.load(Ordering::Relaxed) as f64 * 1e-9
}

/// The step's numbers of one process, summed over its group: what the outcome reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupTotals {
    /// Processes that had at least one readable image (they divide the gradient sum).
    pub contributors: usize,
    /// Σ over the processes of their micro-batch losses, and how many micro-batches.
    pub loss_sum: f64,
    pub micro_batches: usize,
    pub images: usize,
}

impl GroupTotals {
    /// The mean micro-batch loss, as one process reports its own steps.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.micro_batches.max(1) as f64
    }
}

/// Sums the group's losses and counts (exact in f64: a handful of terms per slot, each a
/// loss or a count).
pub fn group_totals(
    group: &dyn Collective,
    loss_sum: Option<f64>,
    micro_batches: usize,
    images: usize,
) -> GroupTotals {
    let mut v = [
        f64::from(u8::from(loss_sum.is_some())),
        loss_sum.unwrap_or(0.0),
        micro_batches as f64,
        images as f64,
    ];
    group.sum_f64(&mut v);
    GroupTotals {
        contributors: v[0] as usize,
        loss_sum: v[1],
        micro_batches: v[2] as usize,
        images: v[3] as usize,
    }
}

/// The mean of the group's gradients, on every process: the sum over the processes, divided
/// once by the number that contributed. `local` is None on a process without images; its
/// part is zeros. A parameter gets a gradient when some process had one for it: one that the
/// forward pass does not use (CLIP's `logit_scale` in the classifier) gets none, as in one
/// process, so AdamW leaves it alone instead of decaying it.
pub fn average_grads<M: Module>(
    module: &M,
    local: Option<GradientsParams>,
    group: &dyn Collective,
    contributors: usize,
) -> GradientsParams {
    let started = Instant::now();
    let mut gather = Gather {
        grads: local,
        // Sized once: growing a buffer of a model's gradients copies it again and again.
        buf: Vec::with_capacity(module.num_params()),
        present: Vec::new(),
        seen: Vec::new(),
    };
    module.visit(&mut gather);
    // One count per parameter after the gradients: how many processes had its gradient
    // (small integers, exact in f32).
    let mut buf = gather.buf;
    let values = buf.len();
    buf.extend(&gather.present);
    group.sum_f32(&mut buf);
    let n = contributors.max(1) as f32;
    for x in &mut buf[..values] {
        *x /= n;
    }
    let (values, present) = buf.split_at(values);
    let mut scatter = Scatter {
        buf: values,
        present,
        at: 0,
        out: GradientsParams::new(),
        seen: Vec::new(),
    };
    module.visit(&mut scatter);
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    SYNC_NANOS.fetch_add(nanos, Ordering::Relaxed);
    scatter.out
}

struct Gather {
    /// Owned, so that each gradient leaves it uniquely held: flex then hands over its buffer
    /// instead of copying it.
    grads: Option<GradientsParams>,
    buf: Vec<f32>,
    /// Per parameter, in visit order: 1 when this process has its gradient.
    present: Vec<f32>,
    seen: Vec<ParamId>,
}

impl ModuleVisitor for Gather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // A parameter reachable twice has one gradient.
        if self.seen.contains(&param.id) {
            return;
        }
        self.seen.push(param.id);
        let grad = self.grads.as_mut().and_then(|g| g.remove::<D>(param.id));
        self.present.push(if grad.is_some() { 1.0 } else { 0.0 });
        match grad {
            Some(g) => {
                let data = g.into_data();
                // f32 gradients (every parameter here is f32) copy as a slice; `iter`
                // converts element by element and took most of a ViT-B/32 step's sync.
                match data.as_slice::<f32>() {
                    Ok(v) => self.buf.extend_from_slice(v),
                    Err(_) => self.buf.extend(data.iter::<f32>()),
                }
            }
            None => {
                let n: usize = param.val().dims().iter().product();
                self.buf.resize(self.buf.len() + n, 0.0);
            }
        }
    }
}

struct Scatter<'a> {
    buf: &'a [f32],
    present: &'a [f32],
    at: usize,
    out: GradientsParams,
    seen: Vec<ParamId>,
}

impl ModuleVisitor for Scatter<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.seen.contains(&param.id) {
            return;
        }
        let k = self.seen.len();
        self.seen.push(param.id);
        let value = param.val();
        let dims = value.dims();
        let n: usize = dims.iter().product();
        let at = self.at;
        self.at += n;
        if self.present.get(k).is_none_or(|&c| c == 0.0) {
            return;
        }
        let part = self.buf[at..at + n].to_vec();
        // Gradients live on the parameter's device without autodiff, as backward leaves them.
        let device = value.inner().device();
        let g = Tensor::<D>::from_data(TensorData::new(part, dims), &device);
        self.out.register(param.id, g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{Comm, Single};
    use clipstock_model::model::{ClipLinear, ParamSource};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Two "processes" in one: `sum_f32` adds the other's buffer, as the MPI sum would.
    struct Pair {
        other: RefCell<Vec<f32>>,
    }

    impl Collective for Pair {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn barrier(&self) {}
        fn broadcast_bytes(&self, _root: usize, _data: &mut Vec<u8>) {}
        fn broadcast_f32(&self, _root: usize, _data: &mut [f32]) {}
        fn sum_f64(&self, _data: &mut [f64]) {}
        fn sum_f32(&self, data: &mut [f32]) {
            for (d, o) in data.iter_mut().zip(self.other.borrow().iter()) {
                *d += o;
            }
        }
        fn split(&self, _color: usize) -> Comm {
            Rc::new(Single)
        }
    }

    fn grads_of(lin: &ClipLinear, w: f32, b: f32) -> GradientsParams {
        let loss = lin.weight.val().sum() * f64::from(w) + lin.bias.val().sum() * f64::from(b);
        GradientsParams::from_grads(loss.backward(), lin)
    }

    fn read(g: &GradientsParams, lin: &ClipLinear) -> (Vec<f32>, Vec<f32>) {
        let w = g.get::<2>(lin.weight.id).expect("w").into_data();
        let b = g.get::<1>(lin.bias.id).expect("b").into_data();
        (w.iter::<f32>().collect(), b.iter::<f32>().collect())
    }

    /// The mean of two processes' gradients, and a process without images adding zeros
    /// while the division counts only the processes that had some.
    #[test]
    fn the_group_gradient_is_the_mean_of_the_contributors() {
        let device = Device::flex().autodiff();
        let mut src = ParamSource::random(1, &device);
        let lin = ClipLinear::new(4, 3, &mut src, "head");
        // The other process's buffer: its gradient 5 (weight) and 1 (bias), in visit order,
        // then its two presence counts.
        let (ow, ob) = read(&grads_of(&lin, 5.0, 1.0), &lin);
        let other: Vec<f32> = ow.iter().chain(&ob).chain(&[1.0, 1.0]).copied().collect();
        let pair = Pair {
            other: RefCell::new(other.clone()),
        };
        let mean = average_grads(&lin, Some(grads_of(&lin, 3.0, 2.0)), &pair, 2);
        let (w, b) = read(&mean, &lin);
        assert!(w.iter().all(|&x| x == 4.0), "{w:?}");
        assert!(b.iter().all(|&x| x == 1.5), "{b:?}");

        // Without images here, only the other process contributed: its gradient, unchanged.
        let alone = average_grads(&lin, None, &pair, 1);
        let (w, b) = read(&alone, &lin);
        assert_eq!((w, b), (ow, ob));
    }

    /// A parameter the loss does not use has no gradient in one process; averaged, it still
    /// has none (a zero gradient would let AdamW's weight decay move it).
    #[test]
    fn an_unused_parameter_gets_no_gradient() {
        let device = Device::flex().autodiff();
        let mut src = ParamSource::random(1, &device);
        let lin = ClipLinear::new(4, 3, &mut src, "head");
        let only_weight = || {
            let loss = lin.weight.val().sum() * 2.0;
            GradientsParams::from_grads(loss.backward(), &lin)
        };
        let local = only_weight();
        assert!(local.get::<1>(lin.bias.id).is_none());
        let w: Vec<f32> = local
            .get::<2>(lin.weight.id)
            .expect("w")
            .into_data()
            .iter::<f32>()
            .collect();
        let mut other = w.clone();
        other.extend([0.0; 3]);
        other.extend([1.0, 0.0]);
        let pair = Pair {
            other: RefCell::new(other),
        };
        let mean = average_grads(&lin, Some(local), &pair, 2);
        assert!(mean.get::<1>(lin.bias.id).is_none());
        let got: Vec<f32> = mean
            .get::<2>(lin.weight.id)
            .expect("w")
            .into_data()
            .iter::<f32>()
            .collect();
        assert_eq!(got, w);
    }

    #[test]
    fn totals_report_the_mean_micro_batch_loss() {
        let t = group_totals(&Single, Some(3.0), 2, 16);
        assert_eq!(
            t,
            GroupTotals {
                contributors: 1,
                loss_sum: 3.0,
                micro_batches: 2,
                images: 16
            }
        );
        assert_eq!(t.loss(), 1.5);
        assert_eq!(group_totals(&Single, None, 0, 0).contributors, 0);
    }
}
