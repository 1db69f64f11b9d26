//! orrery-ir: the typed SSA graph every model is expressed in.
//!
//! A [`Graph`] is a list of [`Node`]s in topological order; each node produces one value with a
//! known [`TensorType`]. Values are graph inputs, named weights (resolved lazily by the runtime
//! from a weight source), constants, or op results. Graphs are built with [`GraphBuilder`], which
//! infers shapes and dtypes as it goes and names the node, op and shapes in every error.
//!
//! Architecture invariant: this crate knows no devices, files or threads. It describes
//! computations; `reference` evaluates them slowly in float64 so every backend can be checked.

mod builder;
mod dtype;
mod dump;
mod error;
mod graph;
pub mod ops;
pub mod reference;
mod serde_bits;
pub mod shape;

pub use builder::GraphBuilder;
pub use dtype::DType;
pub use error::IrError;
pub use graph::{Graph, Node, NodeId, NodeKind};
pub use ops::{
    AttentionLayout, AttentionMask, BinaryOp, CompareOp, ConvPadMode, ConvParams, ConvTransposeParams, Cost,
    FusedProgram, FusedStep, Op, OpFamily, PadMode, PoolKind, PoolParams, ReduceOp, ResizeMode, RopeStyle, UnaryOp,
};
pub use reference::RefTensor;
pub use shape::Shape;

use serde::{Deserialize, Serialize};

/// The static type of a value: dtype and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> TensorType {
        TensorType { dtype, shape: shape.into() }
    }

    pub fn size_bytes(&self) -> u64 {
        (self.shape.numel() * self.dtype.size_bytes()) as u64
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}
