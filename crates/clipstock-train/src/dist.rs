//! Training across processes: the few collective operations the trainer needs, behind a trait
//! so that this crate does not depend on MPI. The binary implements it on MPI (`--features
//! mpi`, launched by `mpirun`/`srun`); without it a training is one process ([`Single`]),
//! exactly as before.
//!
//! The split of the work: the runs (merged, then independent) are dealt out to the ranks in
//! contiguous blocks ([`owned`]); each rank trains, evaluates and checkpoints its own runs,
//! keeps a copy of the others that is refreshed when a merge, an export or a checkpoint needs
//! them, and every rank keeps the same trainer state (losses, evaluations and stop requests
//! are exchanged every step). Only rank 0 writes the run directory's shared files.
//!
//! Every operation is deterministic and rank-order independent: sums are of one non-zero
//! contribution per slot (exact in f64), and tensors are copied, never reduced, so a run split
//! over ranks ends bitwise where the one-process run ends.

use std::ops::Range;
use std::rc::Rc;

/// What the trainer asks of the other processes. Each call is collective: every rank makes
/// the same calls in the same order.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// The rank among the processes of this machine (what picks its GPU).
    fn local_rank(&self) -> usize {
        self.rank()
    }
    fn barrier(&self);
    /// `data` from `root` to every rank; the others' `data` is replaced (any length).
    fn broadcast_bytes(&self, root: usize, data: &mut Vec<u8>);
    /// `data` from `root` into every rank's `data` of the same length.
    fn broadcast_f32(&self, root: usize, data: &mut [f32]);
    /// Element-wise sum over the ranks, in place.
    fn sum_f64(&self, data: &mut [f64]);
}

/// One process: rank 0 of 1, every operation a no-op.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn barrier(&self) {}
    fn broadcast_bytes(&self, _root: usize, _data: &mut Vec<u8>) {}
    fn broadcast_f32(&self, _root: usize, _data: &mut [f32]) {}
    fn sum_f64(&self, _data: &mut [f64]) {}
}

/// Shared by the trainer's parts within one thread (MPI handles are not `Send`).
pub type Comm = Rc<dyn Collective>;

/// The one-process communicator.
pub fn single() -> Comm {
    Rc::new(Single)
}

/// The runs `rank` of `size` trains: a contiguous block, the first ranks taking one more when
/// `runs` does not divide evenly.
pub fn owned(runs: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (runs / size, runs % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The rank that trains run `i`.
pub fn owner(runs: usize, size: usize, i: usize) -> usize {
    (0..size)
        .find(|&r| owned(runs, r, size).contains(&i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_dealt_in_contiguous_blocks() {
        assert_eq!(owned(2, 0, 2), 0..1);
        assert_eq!(owned(2, 1, 2), 1..2);
        assert_eq!(owned(4, 0, 1), 0..4);
        let blocks: Vec<Range<usize>> = (0..3).map(|r| owned(5, r, 3)).collect();
        assert_eq!(blocks, vec![0..2, 2..4, 4..5]);
        for i in 0..5 {
            assert!(blocks[owner(5, 3, i)].contains(&i));
        }
    }
}
