//! The trainer's [`Collective`] on MPI (`--features mpi`), for a training launched by `mpirun`
//! or `srun`. The rest of the program knows nothing of MPI: the trainer asks for a barrier, a
//! broadcast or a sum, and this file is the only caller of the `mpi` crate.
//!
//! MPI's default error handler aborts the job on any failure, and `mpirun` stops every rank
//! when one exits with an error or is killed, so no rank waits for a dead one.

use std::rc::Rc;

use clipstock_train::dist::{Collective, Comm};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;

pub struct MpiComm {
    comm: SimpleCommunicator,
    local_rank: usize,
    /// Finalises MPI when the last communicator is dropped (fields drop in order: `comm`
    /// first).
    _universe: Rc<Universe>,
}

/// Elements per MPI call: counts are C ints, and a model's gradients (ViT-L/14: 304M) come
/// close to their limit.
const CHUNK: usize = 1 << 26;

/// The variables MPI launchers set for their processes (Open MPI, PMI-1/2 of MPICH and
/// Slurm, PMIx).
const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"];

/// MPI, when a launcher started this process; None for a plain start (one process, as
/// without the feature).
pub fn init() -> Option<MpiComm> {
    if !LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
        return None;
    }
    let universe = mpi::initialize()?;
    let world = universe.world();
    // The processes that share this machine, ranked: what picks a process's GPU.
    let local_rank = world.split_shared(world.rank()).rank() as usize;
    Some(MpiComm {
        comm: world,
        local_rank,
        _universe: Rc::new(universe),
    })
}

impl Collective for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn size(&self) -> usize {
        self.comm.size() as usize
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn barrier(&self) {
        self.comm.barrier();
    }

    fn broadcast_bytes(&self, root: usize, data: &mut Vec<u8>) {
        let root = self.comm.process_at_rank(root as i32);
        let mut len = [data.len() as u64];
        root.broadcast_into(&mut len[..]);
        data.resize(len[0] as usize, 0);
        root.broadcast_into(&mut data[..]);
    }

    fn broadcast_f32(&self, root: usize, data: &mut [f32]) {
        self.comm.process_at_rank(root as i32).broadcast_into(data);
    }

    fn sum_f64(&self, data: &mut [f64]) {
        let send = data.to_vec();
        self.comm
            .all_reduce_into(&send[..], data, SystemOperation::sum());
    }

    /// The processes of a run must take exactly the same step, and the standard does not
    /// promise every rank the same bits from an all-reduce of floats (an implementation may
    /// sum in a different order on each). With two ranks every element is one addition,
    /// a + b or b + a, which are the same number, so `MPI_Allreduce` is safe (and measured
    /// faster here); with more, a reduction to rank 0 and a broadcast of its result.
    fn sum_f32(&self, data: &mut [f32]) {
        if self.comm.size() == 2 {
            for chunk in data.chunks_mut(CHUNK) {
                let send = chunk.to_vec();
                self.comm
                    .all_reduce_into(&send[..], chunk, SystemOperation::sum());
            }
            return;
        }
        let root = self.comm.process_at_rank(0);
        for chunk in data.chunks_mut(CHUNK) {
            let send = chunk.to_vec();
            if self.comm.rank() == 0 {
                root.reduce_into_root(&send[..], chunk, SystemOperation::sum());
            } else {
                root.reduce_into(&send[..], SystemOperation::sum());
            }
            root.broadcast_into(chunk);
        }
    }

    fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    fn split(&self, color: usize) -> Comm {
        let color = Color::with_value(i32::try_from(color).unwrap_or(i32::MAX));
        match self.comm.split_by_color(color) {
            Some(comm) => Rc::new(MpiComm {
                local_rank: self.local_rank,
                comm,
                _universe: Rc::clone(&self._universe),
            }),
            // A defined color always yields a communicator; keep the type total anyway.
            None => clipstock_train::dist::single(),
        }
    }
}
