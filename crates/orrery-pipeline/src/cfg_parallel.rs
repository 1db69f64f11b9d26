//! CFG parallelism: the two guidance branches of every denoising step on two ranks at once.
//!
//! Rank 0 (the caller's thread) runs the sampling loop and the conditional branch; rank 1 runs
//! the unconditional branch. Each step, rank 0 broadcasts the unconditional input and the
//! timestep, both ranks evaluate their branch, and an all-gather gives rank 0 both outputs in
//! branch order, so the loop's arithmetic, and its bits, are those of one rank. All data moves
//! through [`Collective`] calls, so the ranks may be threads of this process
//! ([`run_in_process`]) or processes ([`lead`] on rank 0, [`serve`] on rank 1, e.g. under
//! `mpirun`); an empty broadcast ends rank 1.
//! A failing rank aborts the group with its error, so the other fails naming it instead of
//! waiting.

use crate::denoise::{AfterStep, Branch, Sampling};
use crate::PipelineError;
use orrery_parallel::{Collective, InProcessGroup};
use std::cell::RefCell;

/// One branch of the network on one rank: `F` for the scaled input at the timestep.
pub(crate) type BranchNetwork<'a> = dyn Fn(Vec<f32>, f32) -> Result<Vec<f32>, PipelineError> + 'a;
/// A [`BranchNetwork`] another thread may call.
pub(crate) type SharedBranchNetwork<'a> = dyn Fn(Vec<f32>, f32) -> Result<Vec<f32>, PipelineError> + Sync + 'a;

/// Runs `sampling` from `initial` with the conditional branch on this thread and the
/// unconditional one on a second rank in this process.
pub(crate) fn run_in_process(
    sampling: &Sampling,
    initial: Vec<f32>,
    cond: &BranchNetwork,
    uncond: &SharedBranchNetwork,
    after_step: &mut AfterStep,
) -> Result<Vec<f32>, PipelineError> {
    let mut ranks = InProcessGroup::ranks(2);
    let mut second = ranks.pop().expect("two ranks");
    let mut leader = ranks.pop().expect("two ranks");
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("orrery-cfg-rank-1".into())
            .spawn_scoped(s, move || serve(&mut second, uncond))
            .map_err(|e| PipelineError::Invalid(format!("starting the unconditional rank: {e}")))?;
        let result = lead(sampling, initial, cond, &mut leader, after_step);
        let second = worker.join();
        match (result, second) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(_)) => Err(PipelineError::Invalid("the unconditional rank panicked".into())),
            (Ok(_), Ok(Err(e))) => Err(e),
            (Ok(x), Ok(Ok(()))) => Ok(x),
        }
    })
}

/// Rank 0: runs the loop, evaluating the conditional branch here and exchanging with rank 1
/// through `comm`; tells rank 1 to stop at the end (or aborts the group on an error).
pub(crate) fn lead(
    sampling: &Sampling,
    initial: Vec<f32>,
    cond: &BranchNetwork,
    comm: &mut dyn Collective,
    after_step: &mut AfterStep,
) -> Result<Vec<f32>, PipelineError> {
    if comm.size() != 2 || comm.rank() != 0 {
        return Err(PipelineError::Invalid(format!(
            "CFG parallelism runs on exactly 2 ranks, led by rank 0 (this is rank {} of {})",
            comm.rank(),
            comm.size()
        )));
    }
    let comm = RefCell::new(comm);
    let network = |branches: Vec<Branch>, c_noise: f32| -> Result<Vec<Vec<f32>>, PipelineError> {
        let mut branches = branches.into_iter();
        let (Some(c), Some(u), None) = (branches.next(), branches.next(), branches.next()) else {
            return Err(PipelineError::Invalid("CFG parallelism needs exactly two branches per step".into()));
        };
        let mut message = u.input;
        message.push(c_noise);
        comm.borrow_mut().broadcast(&mut message, 0)?;
        let f = cond(c.input, c_noise)?;
        let n = f.len();
        let both = comm.borrow_mut().all_gather(&f)?;
        if both.len() != 2 * n {
            return Err(PipelineError::Invalid(format!(
                "the unconditional rank gave {} values, the conditional {n}",
                both.len() - n
            )));
        }
        Ok(vec![both[..n].to_vec(), both[n..].to_vec()])
    };
    let result = sampling.run(initial, &network, after_step);
    let comm = comm.into_inner();
    match &result {
        // An empty broadcast: the loop is over.
        Ok(_) => {
            let _ = comm.broadcast(&mut Vec::new(), 0);
        }
        Err(e) => comm.abort(&e.to_string()),
    }
    result
}

/// Rank 1: evaluates the unconditional branch for every broadcast input until an empty one.
pub(crate) fn serve(comm: &mut dyn Collective, uncond: &BranchNetwork) -> Result<(), PipelineError> {
    if comm.size() != 2 || comm.rank() != 1 {
        return Err(PipelineError::Invalid(format!(
            "CFG parallelism serves the unconditional branch on rank 1 of 2 (this is rank {} of {})",
            comm.rank(),
            comm.size()
        )));
    }
    loop {
        let mut message = Vec::new();
        comm.broadcast(&mut message, 0)?;
        let Some(c_noise) = message.pop() else { return Ok(()) };
        match uncond(message, c_noise) {
            Ok(f) => _ = comm.all_gather(&f)?,
            Err(e) => {
                comm.abort(&e.to_string());
                return Err(e);
            }
        }
    }
}
