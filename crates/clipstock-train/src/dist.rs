//! Training across processes: the few collective operations the trainer needs, behind a trait
//! so that this crate does not depend on MPI. The binary implements it on MPI (`--features
//! mpi`, launched by `mpirun`/`srun`); without it a training is one process ([`Single`]),
//! exactly as before.
//!
//! The split of the work ([`Placement`]): the ranks form groups of `run.ranks_per_seed` (K)
//! consecutive ranks; the runs (merged, then independent) are dealt out to the groups in
//! contiguous blocks ([`owned`]). The K members of a group share every step of its runs
//! (each a `1/K` share of the batch, gradients averaged by [`Collective::sum_f32`] within
//! the group); the group's first member, its lead, evaluates and checkpoints them. Every
//! rank keeps a copy of the other runs that is refreshed when a merge, an export or a
//! checkpoint needs them, and the same trainer state (losses, evaluations and stop requests
//! are exchanged every step). Only rank 0 writes the run directory's shared files.
//!
//! With K = 1 every operation is deterministic and rank-order independent: sums are of one
//! non-zero contribution per slot (exact in f64), and tensors are copied, never reduced, so
//! a run split over ranks ends bitwise where the one-process run ends. With K > 1 the
//! gradients are summed across processes, which changes the order of the sums: the result
//! is the one-process result up to rounding.

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
    /// Element-wise sum over the ranks, in place, with the same bits on every rank (the
    /// gradients of a run's processes: each then takes the same AdamW step).
    fn sum_f32(&self, data: &mut [f32]);
    /// The ranks of the same `color`, as a communicator of their own, ranked as in this one.
    /// Collective: every rank calls it.
    fn split(&self, color: usize) -> Comm;
    /// Ends every process of the job with `code`: what a process that failed alone does, so
    /// that the others do not wait for it in a collective (nor it for them on the way out).
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
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
    fn sum_f32(&self, _data: &mut [f32]) {}
    fn split(&self, _color: usize) -> Comm {
        single()
    }
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

/// Where one process sits: its group of `per_run` ranks (`run.ranks_per_seed`), the runs
/// that group trains and the rank that speaks for each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub rank: usize,
    pub size: usize,
    /// K: the processes that share each run's steps.
    pub per_run: usize,
    /// All runs, merged and independent.
    pub runs: usize,
}

impl Placement {
    pub fn groups(&self) -> usize {
        (self.size / self.per_run.max(1)).max(1)
    }

    /// This process's group: the ranks `group·K .. (group+1)·K`.
    pub fn group(&self) -> usize {
        self.rank / self.per_run.max(1)
    }

    /// This process's place in its group: which share of each batch it takes.
    pub fn member(&self) -> usize {
        self.rank % self.per_run.max(1)
    }

    /// The group's first member: it evaluates, checkpoints and reports the group's runs.
    pub fn is_lead(&self) -> bool {
        self.member() == 0
    }

    /// The runs this process's group trains.
    pub fn own(&self) -> Range<usize> {
        owned(self.runs, self.group(), self.groups())
    }

    /// The lead of the group that trains run `i`: the rank whose copy of it is the reference.
    pub fn owner(&self, i: usize) -> usize {
        owner(self.runs, self.groups(), i) * self.per_run.max(1)
    }
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

    /// Four processes, two per run: ranks 0 and 1 share run 0 (rank 0 its lead), ranks 2
    /// and 3 run 1; with four runs each group trains two.
    #[test]
    fn groups_of_k_ranks_share_their_runs() {
        let at = |rank, runs| Placement {
            rank,
            size: 4,
            per_run: 2,
            runs,
        };
        let p: Vec<Placement> = (0..4).map(|r| at(r, 2)).collect();
        assert_eq!(
            p.iter().map(|p| p.group()).collect::<Vec<_>>(),
            [0, 0, 1, 1]
        );
        assert_eq!(
            p.iter().map(|p| p.member()).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );
        assert_eq!(
            p.iter().map(|p| p.own()).collect::<Vec<_>>(),
            [0..1, 0..1, 1..2, 1..2]
        );
        assert_eq!((p[3].owner(0), p[3].owner(1)), (0, 2));
        assert!(p[0].is_lead() && !p[1].is_lead() && p[2].is_lead());
        assert_eq!(at(3, 4).own(), 2..4);
        assert_eq!(at(1, 4).owner(3), 2);
        let one = Placement {
            rank: 0,
            size: 1,
            per_run: 1,
            runs: 3,
        };
        assert_eq!((one.own(), one.owner(2), one.is_lead()), (0..3, 0, true));
    }
}
