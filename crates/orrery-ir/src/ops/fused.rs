//! Fused programs: a chain (or DAG) of f32 elementwise functions over several broadcast
//! inputs, run as one kernel so intermediates never touch memory. Two row steps
//! ([`FusedStep::SegMean`], [`FusedStep::Rotate`]) work on aligned segments of the last axis,
//! which is enough to express layer norm, RMS norm and rotary embeddings inside a program and
//! so fuse normalisation with what surrounds it.

use super::{BinaryOp, RopeStyle, UnaryOp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One instruction. Operands are value indices: the program's inputs first (`0..n_inputs`),
/// then the results of earlier steps (`n_inputs + step`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FusedStep {
    Unary(UnaryOp, usize),
    Clamp {
        #[serde(with = "crate::serde_bits::f64")]
        min: f64,
        #[serde(with = "crate::serde_bits::f64")]
        max: f64,
        x: usize,
    },
    Binary(BinaryOp, usize, usize),
    /// An f32 constant, broadcast like a scalar.
    Const(#[serde(with = "crate::serde_bits::f64")] f64),
    /// The mean of each segment of `len` consecutive elements of the last axis (segments start
    /// at multiples of `len`; `len` divides the last dim), broadcast back over the segment.
    /// Accumulated in f64, rounded once to f32.
    SegMean {
        x: usize,
        len: usize,
    },
    /// The rotary partner of each element within segments of `len` (even) elements of the last
    /// axis: [`RopeStyle::RotateHalf`] gives `concat(-x[len/2..], x[..len/2])`,
    /// [`RopeStyle::Interleaved`] gives `(-x[2i+1], x[2i])` per pair.
    Rotate {
        x: usize,
        len: usize,
        style: RopeStyle,
    },
}

/// An elementwise program; its result is the last step's value, broadcast to the shape of all
/// inputs together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusedProgram {
    pub n_inputs: usize,
    pub steps: Vec<FusedStep>,
}

impl FusedStep {
    /// The operands this step reads.
    pub fn operands(&self) -> Vec<usize> {
        match *self {
            FusedStep::Unary(_, x)
            | FusedStep::Clamp { x, .. }
            | FusedStep::SegMean { x, .. }
            | FusedStep::Rotate { x, .. } => vec![x],
            FusedStep::Binary(_, a, b) => vec![a, b],
            FusedStep::Const(_) => vec![],
        }
    }

    /// The same step reading `f(v)` wherever it read value `v` (renumbering when programs are
    /// inlined or their inputs reordered).
    pub fn map_operands(&self, f: impl Fn(usize) -> usize) -> FusedStep {
        match *self {
            FusedStep::Unary(u, x) => FusedStep::Unary(u, f(x)),
            FusedStep::Clamp { min, max, x } => FusedStep::Clamp { min, max, x: f(x) },
            FusedStep::Binary(b, x, y) => FusedStep::Binary(b, f(x), f(y)),
            FusedStep::Const(c) => FusedStep::Const(c),
            FusedStep::SegMean { x, len } => FusedStep::SegMean { x: f(x), len },
            FusedStep::Rotate { x, len, style } => FusedStep::Rotate { x: f(x), len, style },
        }
    }

    /// The segment length of a row step, `None` for elementwise steps.
    pub fn segment(&self) -> Option<usize> {
        match *self {
            FusedStep::SegMean { len, .. } | FusedStep::Rotate { len, .. } => Some(len),
            _ => None,
        }
    }

    /// FLOPs per element, as the unfused ops count them.
    pub fn flops(&self) -> u64 {
        match self {
            FusedStep::Unary(u, _) => super::cost::unary_flops(*u),
            FusedStep::Clamp { .. } => 2,
            FusedStep::Binary(BinaryOp::Pow, ..) => 16,
            FusedStep::Binary(..) => 1,
            FusedStep::Const(_) | FusedStep::Rotate { .. } => 0,
            FusedStep::SegMean { .. } => 1,
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
            match *step {
                FusedStep::SegMean { len: 0, .. } => return Err(format!("step {i}: segment length 0")),
                FusedStep::Rotate { len, .. } if len == 0 || len % 2 != 0 => {
                    return Err(format!("step {i}: rotation segments must have an even length, got {len}"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// True when some step works on segments of the last axis (a row program).
    pub fn has_row_steps(&self) -> bool {
        self.steps.iter().any(|s| s.segment().is_some())
    }

    /// The alignment every chunk of the output must keep (in elements, along the flat output):
    /// the least common multiple of the segment lengths, 1 for a purely elementwise program.
    pub fn alignment(&self) -> usize {
        self.steps.iter().filter_map(FusedStep::segment).fold(1, lcm)
    }

    /// Checks the row steps against the output's dims: each segment length divides the last dim.
    pub fn check_segments(&self, dims: &[usize]) -> Result<(), String> {
        let last = dims.last().copied();
        for (i, len) in self.steps.iter().enumerate().filter_map(|(i, s)| s.segment().map(|l| (i, l))) {
            match last {
                Some(d) if d.is_multiple_of(len) => {}
                _ => return Err(format!("step {i}: segments of {len} do not tile the last dim of {dims:?}")),
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
                FusedStep::SegMean { x, len } => write!(f, "v{v}=seg_mean(v{x}, {len})")?,
                FusedStep::Rotate { x, len, style } => write!(f, "v{v}=rotate(v{x}, {len}, {style:?})")?,
            }
        }
        Ok(())
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}
