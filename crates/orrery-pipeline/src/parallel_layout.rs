//! What a parallel layout of the transformer must communicate per denoising step, read off
//! the compiled plan (`orrery plan`'s communication report).
//!
//! - **Tensor parallelism** over N ranks (Megatron): the q/k/v and MLP-up projections are
//!   column-parallel (heads and hidden units split, no communication), the attention output
//!   projections (`attn1.to_out.0`, `attn2.to_out.0`) and the MLP-down projection (`ff.net.2`)
//!   row-parallel: each ends in an all-reduce of its output. A ring all-reduce of T bytes sends
//!   2(N − 1)/N · T from every rank.
//! - **Sequence parallelism** over N ranks (Ulysses): tokens are split, and every
//!   self-attention switches q, k, v to a head split and its output back, four all-to-alls,
//!   each sending (N − 1)/N² · T from every rank for a tensor of T bytes; cross-attention reads
//!   the whole (replicated) text and needs none; the output tokens are all-gathered once,
//!   (N − 1)/N · T per rank.
//! - **CFG parallelism** over 2 ranks: each runs one guidance branch and sends its output to
//!   the other once per step.
//! - **CFG × tensor or sequence parallelism** over 2N ranks: each branch on a group of N
//!   (one evaluation per group and step), the groups' leaders exchanging like the CFG pair;
//!   a leader sends its group's share plus the exchange.
//!
//! Sizes are the plan's activations (f32 on the CPU backend; half that for a bf16 device).

use crate::PipelineError;
use orrery_compiler::Plan;
use orrery_ir::{NodeKind, Op};

/// How one step's transformer evaluations are spread over ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParallelLayout {
    Tensor(usize),
    Sequence(usize),
    Cfg,
    /// Each guidance branch on N tensor-parallel ranks.
    CfgTensor(usize),
    /// Each guidance branch on N sequence-parallel ranks.
    CfgSequence(usize),
}

impl std::fmt::Display for ParallelLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParallelLayout::Tensor(n) => write!(f, "tp:{n}"),
            ParallelLayout::Sequence(n) => write!(f, "sp:{n}"),
            ParallelLayout::Cfg => write!(f, "cfg"),
            ParallelLayout::CfgTensor(n) => write!(f, "cfg+tp:{n}"),
            ParallelLayout::CfgSequence(n) => write!(f, "cfg+sp:{n}"),
        }
    }
}

impl std::str::FromStr for ParallelLayout {
    type Err = String;

    /// `tp:N`, `sp:N` (N ≥ 2), `cfg`, or `cfg+tp:N` / `cfg+sp:N` (either order).
    fn from_str(s: &str) -> Result<ParallelLayout, String> {
        let model = s.strip_prefix("cfg+").or_else(|| s.strip_suffix("+cfg"));
        if let Some(model) = model {
            return match model.parse::<ParallelLayout>() {
                Ok(ParallelLayout::Tensor(n)) => Ok(ParallelLayout::CfgTensor(n)),
                Ok(ParallelLayout::Sequence(n)) => Ok(ParallelLayout::CfgSequence(n)),
                _ => Err(format!("`{s}`: CFG combines with tp:N or sp:N")),
            };
        }
        let ranks = |n: &str| match n.parse::<usize>() {
            Ok(n) if n >= 2 => Ok(n),
            _ => Err(format!("`{s}`: the rank count must be a whole number ≥ 2")),
        };
        match s.split_once(':') {
            Some(("tp", n)) => Ok(ParallelLayout::Tensor(ranks(n)?)),
            Some(("sp", n)) => Ok(ParallelLayout::Sequence(ranks(n)?)),
            None if s == "cfg" => Ok(ParallelLayout::Cfg),
            _ => Err(format!("`{s}` is not a parallel layout: use tp:N, sp:N, cfg, cfg+tp:N or cfg+sp:N")),
        }
    }
}

/// One layout's communication in one denoising step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepCommunication {
    pub layout: ParallelLayout,
    pub ranks: usize,
    /// Collective calls per step (every rank makes each).
    pub collectives: usize,
    /// Bytes every rank sends per step (with CFG over groups: the most a rank sends, the
    /// groups' leaders'; the collectives count is theirs too).
    pub bytes_per_rank: u64,
}

/// Row-parallel projections: their outputs are all-reduced under tensor parallelism.
const ROW_PARALLEL: [&str; 3] = [".attn1.to_out.0.weight", ".attn2.to_out.0.weight", ".ff.net.2.weight"];

/// The communication of `layout` for one step of `branches` evaluations of the transformer
/// plan `dit`; an error when the model cannot be split so (heads or tokens not divisible).
pub fn step_communication(
    dit: &Plan,
    branches: usize,
    layout: ParallelLayout,
) -> Result<StepCommunication, PipelineError> {
    // CFG over two model-parallel groups: one evaluation per group and step, plus the
    // leaders' exchange.
    let combined = match layout {
        ParallelLayout::CfgTensor(n) => Some(ParallelLayout::Tensor(n)),
        ParallelLayout::CfgSequence(n) => Some(ParallelLayout::Sequence(n)),
        _ => None,
    };
    if let Some(model) = combined {
        let cfg = step_communication(dit, branches, ParallelLayout::Cfg)?;
        let group = step_communication(dit, 1, model)?;
        return Ok(StepCommunication {
            layout,
            ranks: 2 * group.ranks,
            collectives: group.collectives + cfg.collectives,
            bytes_per_rank: group.bytes_per_rank + cfg.bytes_per_rank,
        });
    }
    let graph = &dit.graph;
    let f32_bytes = |numel: usize| numel as u64 * 4;
    let attentions: Vec<(&orrery_compiler::Kernel, Vec<usize>, Vec<usize>)> = dit
        .kernels
        .iter()
        .filter(|k| matches!(graph.node(k.node).op(), Some(Op::Attention { .. })))
        .map(|k| {
            let dims = |i: usize| graph.node(k.inputs[i]).ty.shape.dims().to_vec();
            (k, dims(0), dims(1))
        })
        .collect();
    let heads = attentions.first().map(|(_, q, _)| q[q.len() - 3]).unwrap_or(0);
    let divisible = |n: usize, what: &str, count: usize| {
        if count == 0 || !count.is_multiple_of(n) {
            Err(PipelineError::Invalid(format!(
                "{layout}: the transformer's {count} {what} do not split over {n} ranks"
            )))
        } else {
            Ok(())
        }
    };
    let (ranks, collectives, per_eval) = match layout {
        ParallelLayout::Tensor(n) => {
            divisible(n, "attention heads", heads)?;
            let reduced: Vec<u64> = dit
                .kernels
                .iter()
                .filter(|k| {
                    k.inputs.iter().any(|i| {
                        let node = graph.node(*i);
                        matches!(node.kind, NodeKind::Weight) && ROW_PARALLEL.iter().any(|s| node.name.ends_with(s))
                    })
                })
                .map(|k| f32_bytes(k.output.shape.numel()))
                .collect();
            let bytes: u64 = reduced.iter().map(|t| 2 * (n as u64 - 1) * t / n as u64).sum();
            (n, reduced.len(), bytes)
        }
        ParallelLayout::Sequence(n) => {
            divisible(n, "attention heads", heads)?;
            let self_attention: Vec<_> =
                attentions.iter().filter(|(_, q, k)| q[q.len() - 2] == k[k.len() - 2]).collect();
            let tokens = self_attention.first().map(|(_, q, _)| q[q.len() - 2]).unwrap_or(0);
            divisible(n, "tokens", tokens)?;
            let n64 = n as u64;
            let mut bytes = 0u64;
            for (k, _, _) in &self_attention {
                let tensors = k.inputs[..3].iter().map(|i| graph.node(*i).ty.shape.numel()).sum::<usize>()
                    + k.output.shape.numel();
                bytes += (n64 - 1) * f32_bytes(tensors) / (n64 * n64);
            }
            let output: u64 = graph.outputs().iter().map(|(_, id)| f32_bytes(graph.node(*id).ty.shape.numel())).sum();
            bytes += (n64 - 1) * output / n64;
            (n, 4 * self_attention.len() + 1, bytes)
        }
        ParallelLayout::Cfg => {
            if branches != 2 {
                return Err(PipelineError::Invalid(
                    "cfg: this run evaluates one branch per step (no guidance), nothing to split".into(),
                ));
            }
            let output: u64 = graph.outputs().iter().map(|(_, id)| f32_bytes(graph.node(*id).ty.shape.numel())).sum();
            // One exchange per step, not per branch.
            return Ok(StepCommunication { layout, ranks: 2, collectives: 1, bytes_per_rank: output });
        }
        ParallelLayout::CfgTensor(_) | ParallelLayout::CfgSequence(_) => unreachable!("handled above"),
    };
    Ok(StepCommunication {
        layout,
        ranks,
        collectives: collectives * branches,
        bytes_per_rank: per_eval * branches as u64,
    })
}
