//! The trainer's [`Collective`] on MPI (`--features mpi`), for a training launched by `mpirun`
//! or `srun`. The rest of the program knows nothing of MPI: the trainer asks for a barrier, a
//! broadcast or a sum, and this file is the only caller of the `mpi` crate.
//!
//! MPI's default error handler aborts the job on any failure, and `mpirun` stops every rank
//! when one exits with an error or is killed, so no rank waits for a dead one.

use clipstock_train::dist::Collective;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

pub struct MpiComm {
    world: SimpleCommunicator,
    local_rank: usize,
    /// Finalises MPI when dropped, after the trainer is done with `world`.
    _universe: Universe,
}

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
        world,
        local_rank,
        _universe: universe,
    })
}

impl Collective for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn broadcast_bytes(&self, root: usize, data: &mut Vec<u8>) {
        let root = self.world.process_at_rank(root as i32);
        let mut len = [data.len() as u64];
        root.broadcast_into(&mut len[..]);
        data.resize(len[0] as usize, 0);
        root.broadcast_into(&mut data[..]);
    }

    fn broadcast_f32(&self, root: usize, data: &mut [f32]) {
        self.world.process_at_rank(root as i32).broadcast_into(data);
    }

    fn sum_f64(&self, data: &mut [f64]) {
        let send = data.to_vec();
        self.world
            .all_reduce_into(&send[..], data, SystemOperation::sum());
    }
}
