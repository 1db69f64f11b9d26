//! CFG parallelism: the two guidance branches of every denoising step on two ranks at once.
//!
//! Rank 0 (the caller's thread) runs the sampling loop and the conditional branch; rank 1 runs
//! the unconditional branch. Each step, rank 0 broadcasts the unconditional input and the
//! timestep, both ranks evaluate their branch, and an all-gather gives rank 0 both outputs in
//! branch order, so the loop's arithmetic, and its bits, are those of one rank. All data moves
//! through [`Collective`] calls, as it will between processes; an empty broadcast ends rank 1.
//! A failing rank aborts the group with its error, so the other fails naming it instead of
//! waiting.

use crate::denoise::{AfterStep, Branch, Sampling};
use crate::PipelineError;
use orrery_parallel::{Collective, InProcessComm, InProcessGroup};
use std::cell::RefCell;

/// One branch of the network on one rank: `F` for the scaled input at the timestep.
pub(crate) type BranchNetwork<'a> = dyn Fn(Vec<f32>, f32) -> Result<Vec<f32>, PipelineError> + 'a;

/// Runs `sampling` from `initial` with the conditional branch on this thread and the
/// unconditional one on a second rank.
pub(crate) fn run(
    sampling: &Sampling,
    initial: Vec<f32>,
    cond: &BranchNetwork,
    uncond: &(dyn Fn(Vec<f32>, f32) -> Result<Vec<f32>, PipelineError> + Sync),
    after_step: &mut AfterStep,
) -> Result<Vec<f32>, PipelineError> {
    let mut ranks = InProcessGroup::ranks(2);
    let second = ranks.pop().expect("two ranks");
    let leader = RefCell::new(ranks.pop().expect("two ranks"));
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("orrery-cfg-rank-1".into())
            .spawn_scoped(s, move || uncond_rank(second, uncond))
            .map_err(|e| PipelineError::Invalid(format!("starting the unconditional rank: {e}")))?;
        let network = |branches: Vec<Branch>, c_noise: f32| -> Result<Vec<Vec<f32>>, PipelineError> {
            let mut branches = branches.into_iter();
            let (Some(c), Some(u), None) = (branches.next(), branches.next(), branches.next()) else {
                return Err(PipelineError::Invalid("CFG parallelism needs exactly two branches per step".into()));
            };
            let mut message = u.input;
            message.push(c_noise);
            leader.borrow_mut().broadcast(&mut message, 0)?;
            let f = cond(c.input, c_noise)?;
            let n = f.len();
            let both = leader.borrow_mut().all_gather(&f)?;
            if both.len() != 2 * n {
                return Err(PipelineError::Invalid(format!(
                    "the unconditional rank gave {} values, the conditional {n}",
                    both.len() - n
                )));
            }
            Ok(vec![both[..n].to_vec(), both[n..].to_vec()])
        };
        let result = sampling.run(initial, &network, after_step);
        match &result {
            // An empty broadcast: the loop is over.
            Ok(_) => {
                let _ = leader.borrow_mut().broadcast(&mut Vec::new(), 0);
            }
            Err(e) => leader.borrow_mut().abort(&e.to_string()),
        }
        let second = worker.join();
        match (result, second) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(_)) => Err(PipelineError::Invalid("the unconditional rank panicked".into())),
            (Ok(_), Ok(Err(e))) => Err(e),
            (Ok(x), Ok(Ok(()))) => Ok(x),
        }
    })
}

/// Rank 1: evaluates the unconditional branch for every broadcast input until an empty one.
fn uncond_rank(
    mut comm: InProcessComm,
    uncond: &(dyn Fn(Vec<f32>, f32) -> Result<Vec<f32>, PipelineError> + Sync),
) -> Result<(), PipelineError> {
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
