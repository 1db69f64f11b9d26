//! Fused elementwise programs: a chain (or DAG) of f32 elementwise functions over several
//! broadcast inputs, run as one kernel so intermediates never touch memory.

use super::{BinaryOp, UnaryOp};
use std::fmt;

/// One instruction. Operands are value indices: the program's inputs first (`0..n_inputs`),
/// then the results of earlier steps (`n_inputs + step`).
#[derive(Clone, Debug, PartialEq)]
pub enum FusedStep {
    Unary(UnaryOp, usize),
    Clamp {
        min: f64,
        max: f64,
        x: usize,
    },
    Binary(BinaryOp, usize, usize),
    /// An f32 constant, broadcast like a scalar.
    Const(f64),
}

/// An elementwise program; its result is the last step's value, broadcast to the shape of all
/// inputs together.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedProgram {
    pub n_inputs: usize,
    pub steps: Vec<FusedStep>,
}

impl FusedStep {
    /// The operands this step reads.
    pub fn operands(&self) -> Vec<usize> {
        match *self {
            FusedStep::Unary(_, x) | FusedStep::Clamp { x, .. } => vec![x],
            FusedStep::Binary(_, a, b) => vec![a, b],
            FusedStep::Const(_) => vec![],
        }
    }

    /// FLOPs per element, as the unfused ops count them.
    pub fn flops(&self) -> u64 {
        match self {
            FusedStep::Unary(u, _) => super::cost::unary_flops(*u),
            FusedStep::Clamp { .. } => 2,
            FusedStep::Binary(BinaryOp::Pow, ..) => 16,
            FusedStep::Binary(..) => 1,
            FusedStep::Const(_) => 0,
        }
    }
}

impl FusedProgram {
    /// Checks that every operand refers to an input or an earlier step.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("a fused program needs at least one step".into());
        }
        for (i, step) in self.steps.iter().enumerate() {
            if let Some(bad) = step.operands().into_iter().find(|&v| v >= self.n_inputs + i) {
                return Err(format!("step {i} reads value v{bad}, which is not defined before it"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for FusedProgram {
    /// `v2=mul(v0, v1); v3=gelu(v2)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let v = self.n_inputs + i;
            match step {
                FusedStep::Unary(u, x) => write!(f, "v{v}={}(v{x})", super::Op::Unary(*u).name())?,
                FusedStep::Clamp { min, max, x } => write!(f, "v{v}=clamp(v{x}, {min}, {max})")?,
                FusedStep::Binary(b, x, y) => write!(f, "v{v}={}(v{x}, v{y})", super::Op::Binary(*b).name())?,
                FusedStep::Const(c) => write!(f, "v{v}={c}")?,
            }
        }
        Ok(())
    }
}
