//! Runs across processes: `mpirun -np 2 orrery generate --cfg-parallel …` puts the two guidance
//! branches on two processes (rank 0 runs the pipeline and writes the outputs, rank 1 serves
//! the unconditional branch); `mpirun -np N orrery generate --tp N …` (or `--sp N`) runs every
//! transformer evaluation on N processes, each with its shard of the heads (or tokens); rank 0
//! runs the rest of the pipeline. MPI support is the `mpi` cargo feature (the system's OpenMPI);
//! a binary built without it refuses to run under `mpirun` rather than run the job twice.

use anyhow::{bail, Result};
use orrery_models::ShardAxis;
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

/// The parallel layout the flags ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `--cfg-parallel`: the guidance branches on 2 ranks.
    pub cfg: bool,
    /// `--tp N` or `--sp N`: each transformer evaluation on this many ranks (1: off).
    pub model: usize,
    /// What those ranks split: heads (`--tp`) or tokens (`--sp`).
    pub axis: ShardAxis,
}

impl Layout {
    fn flag(&self) -> String {
        match (self.cfg, self.axis) {
            (true, _) => "--cfg-parallel".into(),
            (false, ShardAxis::Heads) => format!("--tp {}", self.model),
            (false, ShardAxis::Tokens) => format!("--sp {}", self.model),
        }
    }
}

/// The collective of an `mpirun` launch, checked against the flags: one process per rank of
/// the layout.
pub fn connect(launch: Launch, layout: Layout, batch: bool) -> Result<RefCell<Box<dyn Collective>>> {
    let ranks = match layout {
        Layout { cfg: true, .. } => 2,
        Layout { model, .. } if model > 1 => model,
        _ => bail!(
            "orrery runs under mpirun with {} processes but no parallel layout was given: pass --cfg-parallel \
             (2 processes), --tp {} or --sp {} (one process per rank), or run a single process",
            launch.size,
            launch.size,
            launch.size
        ),
    };
    if launch.size != ranks {
        bail!("{} runs on {ranks} processes, mpirun started {}: use mpirun -np {ranks}", layout.flag(), launch.size);
    }
    if batch {
        bail!("--batch is not supported across processes yet: run the batch in one process");
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
