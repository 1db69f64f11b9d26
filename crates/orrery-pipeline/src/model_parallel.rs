//! Model parallelism: every transformer evaluation runs on N ranks at once, each with its
//! shard (`orrery_models::Shard`): tensor parallelism gives each rank a part of the blocks'
//! attention heads and MLP width, its partial sums completed by the plan's all-reduces;
//! sequence parallelism (Ulysses) gives each rank a part of the tokens, regrouped by heads
//! around every self-attention by the plan's all-to-alls.
//!
//! Rank 0 (the caller's thread) runs the whole pipeline. For each transformer evaluation it
//! broadcasts the evaluation's inputs (every graph input, in name order, plus a marker), then
//! every rank runs its shard's session through the same collective; every rank ends with the
//! whole output (the all-reduces give all ranks the same bits), and rank 0 goes on with it.
//! The other ranks ([`follow`]) only evaluate, until an empty broadcast ends them. The ranks
//! are threads of this process ([`LocalGroup::spawn`]) or processes (`mpirun`, each calling
//! `CosmosPipeline::follow_model_parallel`). A failing rank aborts the group with its error,
//! so the others fail naming it instead of waiting.

use crate::PipelineError;
use orrery_cpu::CpuTensor;
use orrery_ir::{DType, NodeKind};
use orrery_models::ShardAxis;
use orrery_parallel::{Collective, InProcessComm, InProcessGroup};
use orrery_runtime::{RunStats, Session};
use std::collections::HashMap;

/// Where the transformer's evaluations run, and what their ranks split.
#[derive(Clone, Copy, Default)]
pub enum ModelParallel<'a> {
    /// On one rank, here.
    #[default]
    Off,
    /// On `ranks` ranks of this process, `threads` split between them.
    InProcess { ranks: usize, axis: ShardAxis },
    /// On the ranks of a collective (e.g. MPI processes): rank 0 calls
    /// [`crate::CosmosPipeline::generate`] and gets the video, every other rank calls
    /// [`crate::CosmosPipeline::follow_model_parallel`] with the same request.
    Ranks { comm: &'a std::cell::RefCell<dyn Collective + 'static>, axis: ShardAxis },
}

impl ModelParallel<'_> {
    /// Tensor parallelism on `ranks` in-process ranks (`--tp`).
    pub fn tensor(ranks: usize) -> ModelParallel<'static> {
        ModelParallel::InProcess { ranks, axis: ShardAxis::Heads }
    }

    /// Sequence parallelism on `ranks` in-process ranks (`--sp`).
    pub fn sequence(ranks: usize) -> ModelParallel<'static> {
        ModelParallel::InProcess { ranks, axis: ShardAxis::Tokens }
    }

    /// How many ranks share each evaluation (1 when off). With `Ranks` it reads the
    /// collective's size, so call it before a run borrows the collective for its evaluations.
    pub fn ranks(&self) -> usize {
        match self {
            ModelParallel::Off => 1,
            ModelParallel::InProcess { ranks, .. } => *ranks,
            ModelParallel::Ranks { comm, .. } => comm.borrow().size(),
        }
    }

    /// What the ranks split.
    pub fn axis(&self) -> ShardAxis {
        match self {
            ModelParallel::Off => ShardAxis::Heads,
            ModelParallel::InProcess { axis, .. } | ModelParallel::Ranks { axis, .. } => *axis,
        }
    }

    /// The CLI flag that asks for this layout (`--tp 2`, `--sp 4`), for messages.
    pub(crate) fn flag(&self) -> String {
        let name = match self.axis() {
            ShardAxis::Heads => "--tp",
            ShardAxis::Tokens => "--sp",
        };
        format!("{name} {}", self.ranks())
    }
}

/// The graph inputs of a plan in name order with their shapes: how one evaluation's inputs
/// travel as one f32 message (empty for a rank alone, which sends nothing).
#[derive(Default)]
pub(crate) struct InputLayout(Vec<(String, Vec<usize>)>);

impl InputLayout {
    /// Refused when an input is not f32 (the transformer's are).
    pub(crate) fn of(session: &Session) -> Result<InputLayout, PipelineError> {
        let graph = &session.plan().graph;
        let mut inputs = Vec::new();
        for node in graph.nodes().iter().filter(|n| matches!(n.kind, NodeKind::Input)) {
            if node.ty.dtype != DType::F32 {
                return Err(PipelineError::Invalid(format!(
                    "model parallelism sends f32 inputs, but `{}` is {}",
                    node.name, node.ty
                )));
            }
            inputs.push((node.name.clone(), node.ty.shape.dims().to_vec()));
        }
        inputs.sort();
        Ok(InputLayout(inputs))
    }

    fn pack(&self, inputs: &HashMap<String, CpuTensor>) -> Result<Vec<f32>, PipelineError> {
        let mut message = Vec::with_capacity(self.0.iter().map(|(_, s)| s.iter().product::<usize>()).sum());
        for (name, shape) in &self.0 {
            let t = inputs.get(name).ok_or_else(|| PipelineError::Invalid(format!("no input `{name}` to send")))?;
            if t.shape() != shape.as_slice() {
                return Err(PipelineError::Invalid(format!("input `{name}` is {:?}, the plan's {shape:?}", t.shape())));
            }
            message.extend(t.to_f32_vec());
        }
        Ok(message)
    }

    fn unpack(&self, message: &[f32]) -> Result<HashMap<String, CpuTensor>, PipelineError> {
        let total: usize = self.0.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        if message.len() != total {
            return Err(PipelineError::Invalid(format!(
                "rank 0 sent {} input values, this rank's plan takes {total}: the ranks' plans differ",
                message.len()
            )));
        }
        let mut at = 0;
        let mut inputs = HashMap::new();
        for (name, shape) in &self.0 {
            let n: usize = shape.iter().product();
            inputs.insert(name.clone(), CpuTensor::from_vec(shape.clone(), message[at..at + n].to_vec()));
            at += n;
        }
        Ok(inputs)
    }
}

/// Rank 0's evaluation: sends `inputs` to the other ranks, then runs its own shard with them.
fn lead_evaluation(
    session: &Session,
    layout: &InputLayout,
    inputs: HashMap<String, CpuTensor>,
    comm: &mut dyn Collective,
) -> Result<(HashMap<String, CpuTensor>, RunStats), PipelineError> {
    let mut message = layout.pack(&inputs)?;
    // A marker, so that an evaluation is never an empty message (the end).
    message.push(1.0);
    comm.broadcast(&mut message, 0)?;
    Ok(session.run_parallel(inputs, comm)?)
}

/// The ranks one evaluation runs on, as their leader (rank 0 of the group) holds them.
pub(crate) enum Group<'c> {
    /// One rank, or ranks 1.. as threads of this process.
    Local(LocalGroup),
    /// The ranks of a collective the caller made (e.g. MPI processes).
    Ranks(std::cell::RefMut<'c, dyn Collective + 'static>),
}

/// A group within this process: its leader alone, or with ranks 1.. as threads, each with its
/// session. `Send`, so an in-process CFG rank can lead one from its own thread.
pub(crate) struct LocalGroup(Option<(InProcessComm, Followers)>);

impl LocalGroup {
    /// The leader alone.
    pub(crate) const ALONE: LocalGroup = LocalGroup(None);

    /// Starts `sessions[i]` as rank `i + 1` of a new in-process group led by the caller.
    pub(crate) fn spawn(sessions: Vec<Session>) -> Result<LocalGroup, PipelineError> {
        let mut comms = InProcessGroup::ranks(sessions.len() + 1);
        let comm = comms.remove(0);
        Ok(LocalGroup(Some((comm, Followers::spawn(sessions, comms)?))))
    }

    /// Runs one evaluation of `session` (this rank's shard) on the group.
    pub(crate) fn evaluate(
        &mut self,
        session: &Session,
        layout: &InputLayout,
        inputs: HashMap<String, CpuTensor>,
    ) -> Result<(HashMap<String, CpuTensor>, RunStats), PipelineError> {
        match &mut self.0 {
            None => Ok(session.run_owned(inputs)?),
            Some((comm, _)) => lead_evaluation(session, layout, inputs, comm),
        }
    }

    /// Ends the group after the leader's `result` (see [`Group::finish`]).
    pub(crate) fn finish<T>(self, result: Result<T, PipelineError>) -> Result<T, PipelineError> {
        let Some((mut comm, followers)) = self.0 else { return result };
        end(&mut comm, &result);
        drop(comm);
        let joined = followers.join();
        result.and_then(|value| joined.map(|()| value))
    }
}

impl Group<'_> {
    /// Runs one evaluation of `session` (this rank's shard) on the group: alone directly,
    /// else sending the inputs to the other ranks first.
    pub(crate) fn evaluate(
        &mut self,
        session: &Session,
        layout: &InputLayout,
        inputs: HashMap<String, CpuTensor>,
    ) -> Result<(HashMap<String, CpuTensor>, RunStats), PipelineError> {
        match self {
            Group::Local(group) => group.evaluate(session, layout, inputs),
            Group::Ranks(comm) => lead_evaluation(session, layout, inputs, &mut **comm),
        }
    }

    /// Ends the group after the leader's `result`: the other ranks stop, or on an error the
    /// group is aborted with it. The leader's error comes first, else a follower's.
    pub(crate) fn finish<T>(self, result: Result<T, PipelineError>) -> Result<T, PipelineError> {
        match self {
            Group::Local(group) => group.finish(result),
            Group::Ranks(mut comm) => {
                end(&mut *comm, &result);
                result
            }
        }
    }
}

/// Tells the other ranks the run is over: an empty broadcast, or the leader's error.
fn end<T>(comm: &mut dyn Collective, result: &Result<T, PipelineError>) {
    match result {
        Ok(_) => _ = comm.broadcast(&mut Vec::new(), 0),
        Err(e) => comm.abort(&e.to_string()),
    }
}

/// A rank other than 0: evaluates its shard for every input rank 0 sends, until the end.
pub(crate) fn follow(session: &Session, comm: &mut dyn Collective) -> Result<(), PipelineError> {
    let layout = InputLayout::of(session)?;
    loop {
        let mut message = Vec::new();
        comm.broadcast(&mut message, 0)?;
        if message.pop().is_none() {
            return Ok(());
        }
        let result = layout.unpack(&message).and_then(|inputs| Ok(session.run_parallel(inputs, comm)?));
        if let Err(e) = result {
            comm.abort(&e.to_string());
            return Err(e);
        }
    }
}

/// Ranks 1.. of an in-process group, each on a thread of its own with its session.
struct Followers {
    threads: Vec<std::thread::JoinHandle<Result<(), PipelineError>>>,
}

impl Followers {
    /// Starts `sessions[i]` as rank `i + 1` on `comms[i]`.
    fn spawn(sessions: Vec<Session>, comms: Vec<InProcessComm>) -> Result<Followers, PipelineError> {
        let mut threads = Vec::new();
        for (i, (session, mut comm)) in sessions.into_iter().zip(comms).enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("orrery-rank-{}", i + 1))
                .spawn(move || follow(&session, &mut comm))
                .map_err(|e| PipelineError::Invalid(format!("starting parallel rank {}: {e}", i + 1)))?;
            threads.push(thread);
        }
        Ok(Followers { threads })
    }

    /// Waits for every rank to end; the first failure, if any.
    fn join(self) -> Result<(), PipelineError> {
        let mut first = Ok(());
        for (i, t) in self.threads.into_iter().enumerate() {
            let r =
                t.join().unwrap_or_else(|_| Err(PipelineError::Invalid(format!("parallel rank {} panicked", i + 1))));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
