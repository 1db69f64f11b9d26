//! Runs across processes: `mpirun -np 2 orrery generate --cfg-parallel …` puts the two guidance
//! branches on two processes (rank 0 runs the pipeline and writes the outputs, rank 1 serves
//! the unconditional branch). MPI support is the `mpi` cargo feature (the system's OpenMPI);
//! a binary built without it refuses to run under `mpirun` rather than run the job twice.

use anyhow::{bail, Result};
use orrery_parallel::Collective;
use std::cell::RefCell;

/// This process's place in an `mpirun` launch, from the launcher's environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub size: usize,
}

/// `Some` when started by `mpirun` (Open MPI, or a PMI launcher such as MPICH's or Slurm's)
/// with more than one process.
pub fn detect() -> Option<Launch> {
    let var = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok()?.parse::<usize>().ok());
    let size = var(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"])?;
    let rank = var(&["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]).unwrap_or(0);
    (size > 1).then_some(Launch { rank, size })
}

/// The collective of an `mpirun` launch, checked against the flags.
pub fn connect(launch: Launch, cfg_parallel: bool, batch: bool) -> Result<RefCell<Box<dyn Collective>>> {
    if !cfg_parallel {
        bail!(
            "orrery runs under mpirun with {} processes but no parallel layout was given: pass --cfg-parallel \
             (2 processes), or run a single process",
            launch.size
        );
    }
    if launch.size != 2 {
        bail!("--cfg-parallel runs on 2 processes, mpirun started {}: use mpirun -np 2", launch.size);
    }
    if batch {
        bail!("--batch is not supported across processes yet: run the batch in one process (--cfg-parallel alone)");
    }
    open()
}

#[cfg(feature = "mpi")]
fn open() -> Result<RefCell<Box<dyn Collective>>> {
    let comm = orrery_parallel::MpiComm::init()?;
    Ok(RefCell::new(Box::new(comm)))
}

#[cfg(not(feature = "mpi"))]
fn open() -> Result<RefCell<Box<dyn Collective>>> {
    bail!(
        "this orrery was built without MPI, so it cannot join an mpirun launch: rebuild it with \
         `cargo build --release -p orrery-cli --features mpi` (needs libopenmpi-dev and libclang-dev)"
    )
}
