//! Runs across processes: `mpirun -np 2 orrery generate --cfg-parallel …` puts the two guidance
//! branches on two processes (rank 0 runs the pipeline and writes the outputs, rank 1 serves
//! the unconditional branch); `mpirun -np N orrery generate --tp N …` (or `--sp N`) runs every
//! transformer evaluation on N processes, each with its shard of the heads (or tokens); rank 0
//! runs the rest of the pipeline. Both together take 2 × N processes: two groups of N, one per
//! branch, whose leaders exchange like the two CFG ranks. MPI support is the `mpi` cargo feature (the system's OpenMPI);
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
    /// `--cfg-parallel`: the guidance branches on 2 groups of ranks.
    pub cfg: bool,
    /// `--tp N` or `--sp N`: each transformer evaluation on this many ranks (1: off).
    pub model: usize,
    /// What those ranks split: heads (`--tp`) or tokens (`--sp`).
    pub axis: ShardAxis,
}

impl Layout {
    /// How many ranks the layout has: 2 per CFG × the model ranks.
    pub fn ranks(&self) -> usize {
        (if self.cfg { 2 } else { 1 }) * self.model
    }

    fn flags(&self) -> String {
        let model = match (self.model, self.axis) {
            (1, _) => None,
            (n, ShardAxis::Heads) => Some(format!("--tp {n}")),
            (n, ShardAxis::Tokens) => Some(format!("--sp {n}")),
        };
        [self.cfg.then(|| "--cfg-parallel".to_string()), model].into_iter().flatten().collect::<Vec<_>>().join(" ")
    }
}

/// What a process does in an mpirun launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// World rank 0: runs the pipeline (leading the conditional branch's group) and writes.
    Lead,
    /// The leader of the unconditional branch's group (`--cfg-parallel`).
    // Only an MPI build joins a launch, so only it makes the roles below.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    ServeUncond,
    /// A model-parallel rank other than its group's leader: evaluates its shard.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    Follow,
}

/// This process's collectives in an mpirun launch, one group per kind of the layout.
pub struct Ranks {
    pub role: Role,
    /// The CFG pair (the two groups' leaders; `None` on the other ranks or without CFG).
    pub cfg: Option<RefCell<Box<dyn Collective>>>,
    /// This rank's model-parallel group (`None` without `--tp`/`--sp`).
    pub model: Option<RefCell<Box<dyn Collective>>>,
}

/// The collectives of an `mpirun` launch, checked against the flags: one process per rank of
/// the layout. World rank w is rank `w % N` of model group `w / N` (N model ranks); group 0
/// computes the conditional branch, group 1 (with `--cfg-parallel`) the unconditional one,
/// and the groups' leaders (ranks 0 and N) form the CFG pair.
pub fn connect(launch: Launch, layout: Layout, batch: bool) -> Result<Ranks> {
    if layout.ranks() == 1 {
        bail!(
            "orrery runs under mpirun with {n} processes but no parallel layout was given: pass --cfg-parallel \
             (2 processes), --tp {n} or --sp {n} (one process per rank), or run a single process",
            n = launch.size
        );
    }
    if launch.size != layout.ranks() {
        let n = layout.ranks();
        bail!("{} runs on {n} processes, mpirun started {}: use mpirun -np {n}", layout.flags(), launch.size);
    }
    if batch {
        bail!("--batch is not supported across processes yet: run the batch in one process");
    }
    open(launch, layout)
}

#[cfg(feature = "mpi")]
fn open(launch: Launch, layout: Layout) -> Result<Ranks> {
    let world = orrery_parallel::MpiComm::init()?;
    let (group, member) = (launch.rank / layout.model, launch.rank % layout.model);
    let boxed = |c: orrery_parallel::MpiComm| RefCell::new(Box::new(c) as Box<dyn Collective>);
    let model = match layout.model {
        1 => None,
        _ => world.split(Some(group as u16))?.map(boxed),
    };
    let cfg = match (layout.cfg, layout.model) {
        (false, _) => None,
        (true, 1) => Some(boxed(world)),
        (true, _) => world.split((member == 0).then_some(0))?.map(boxed),
    };
    let role = match (group, member) {
        (0, 0) => Role::Lead,
        (_, 0) => Role::ServeUncond,
        _ => Role::Follow,
    };
    Ok(Ranks { role, cfg, model })
}

#[cfg(not(feature = "mpi"))]
fn open(_: Launch, _: Layout) -> Result<Ranks> {
    bail!(
        "this orrery was built without MPI, so it cannot join an mpirun launch: rebuild it with \
         `cargo build --release -p orrery-cli --features mpi` (needs libopenmpi-dev and libclang-dev)"
    )
}
