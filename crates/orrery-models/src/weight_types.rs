//! Declaring weights with their stored dtype.

use crate::ModelError;
use orrery_ir::{DType, GraphBuilder, NodeId};

/// Looks up a weight's stored dtype and shape by checkpoint key.
pub type WeightLookup<'a> = &'a dyn Fn(&str) -> Option<(DType, Vec<usize>)>;

/// Tells a model builder the stored dtype of each weight and checks the shapes the config
/// implies against the checkpoint, so mismatches surface when building, naming the tensor.
pub enum WeightTypes<'a> {
    /// Weights from a checkpoint: `lookup(name)` gives its stored dtype and shape.
    Checkpoint(WeightLookup<'a>),
    /// No weights at hand (`orrery compile` on a config): every weight is declared as `dtype`.
    Assumed(DType),
    /// `inner` under other key names: builders declare one canonical name (the diffusers key)
    /// and `rename` gives the checkpoint's own (e.g. a Predict1 `model.pt`'s `net.*` keys);
    /// the graph's weight nodes carry the checkpoint's names.
    Renamed { inner: &'a WeightTypes<'a>, rename: &'a dyn Fn(&str) -> String },
}

impl WeightTypes<'_> {
    /// True when the checkpoint has a tensor `name` (never for assumed types): for choosing
    /// between alternative keys of the same weight.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            WeightTypes::Checkpoint(lookup) => lookup(name).is_some(),
            WeightTypes::Assumed(_) => false,
            WeightTypes::Renamed { inner, rename } => inner.contains(&rename(name)),
        }
    }

    /// Declares weight `name` whose shape the config implies.
    pub fn declare(&self, b: &mut GraphBuilder, name: &str, shape: &[usize]) -> Result<NodeId, ModelError> {
        self.declare_part(b, name, shape, WeightPart::Whole)
    }

    /// Declares `part` of weight `name`, whose whole shape the config implies (checked against
    /// the checkpoint like [`WeightTypes::declare`]); the node is named as the weight store
    /// reads the part (`name@rows[a:b]`, `name@cols[a:b]`), so only its bytes are read.
    pub fn declare_part(
        &self,
        b: &mut GraphBuilder,
        name: &str,
        shape: &[usize],
        part: WeightPart,
    ) -> Result<NodeId, ModelError> {
        let dtype = match self {
            WeightTypes::Renamed { inner, rename } => return inner.declare_part(b, &rename(name), shape, part),
            WeightTypes::Assumed(dtype) => *dtype,
            WeightTypes::Checkpoint(lookup) => {
                let (dtype, stored) = lookup(name).ok_or_else(|| ModelError::Weight {
                    name: name.to_string(),
                    reason: "not found in the checkpoint".into(),
                })?;
                if stored != shape {
                    return Err(ModelError::Weight {
                        name: name.to_string(),
                        reason: format!("the checkpoint has shape {stored:?}, the config implies {shape:?}"),
                    });
                }
                if !dtype.is_float() {
                    return Err(ModelError::Weight {
                        name: name.to_string(),
                        reason: format!("stored as {dtype}; expected f32, f16 or bf16"),
                    });
                }
                dtype
            }
        };
        let mut dims = shape.to_vec();
        let (axis, range, kind) = match part {
            WeightPart::Whole => return Ok(b.weight(name, dtype, dims)?),
            WeightPart::Rows(r) => (0, r, "rows"),
            WeightPart::Cols(r) => (1, r, "cols"),
        };
        if axis >= dims.len() || range.start >= range.end || range.end > dims[axis] {
            return Err(ModelError::Weight {
                name: name.to_string(),
                reason: format!("{kind} {range:?} of a tensor of shape {shape:?} do not exist"),
            });
        }
        dims[axis] = range.len();
        Ok(b.weight(&format!("{name}@{kind}[{}:{}]", range.start, range.end), dtype, dims)?)
    }
}

/// Which part of a stored weight a graph reads: all of it, rows (axis 0: a linear's outputs)
/// or columns (axis 1: its inputs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightPart {
    Whole,
    Rows(std::ops::Range<usize>),
    Cols(std::ops::Range<usize>),
}

/// What the ranks of a parallel group split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardAxis {
    /// Tensor parallelism (Megatron-style): column-parallel linears keep rows
    /// `rank·n/ranks..` of their weight, row-parallel ones the same columns, and an all-reduce
    /// sums the partial outputs; attention heads split with them.
    Heads,
    /// Sequence parallelism (Ulysses): every rank keeps every weight and `1/ranks` of the
    /// tokens; all-to-alls regroup q, k, v by heads around each self-attention.
    Tokens,
}

/// The part of a parallel group a graph is built for: rank `rank` of `ranks`, splitting
/// `axis`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    pub rank: usize,
    pub ranks: usize,
    pub axis: ShardAxis,
}

impl Shard {
    /// The whole model on one device.
    pub const WHOLE: Shard = Shard { rank: 0, ranks: 1, axis: ShardAxis::Heads };

    /// Rank `rank` of `ranks` tensor-parallel ranks.
    pub fn heads(rank: usize, ranks: usize) -> Shard {
        Shard { rank, ranks, axis: ShardAxis::Heads }
    }

    /// Rank `rank` of `ranks` sequence-parallel ranks.
    pub fn tokens(rank: usize, ranks: usize) -> Shard {
        Shard { rank, ranks, axis: ShardAxis::Tokens }
    }

    pub fn is_whole(&self) -> bool {
        self.ranks == 1
    }

    /// True when the ranks split the heads and weights (tensor parallelism).
    pub fn splits_heads(&self) -> bool {
        self.ranks > 1 && self.axis == ShardAxis::Heads
    }

    /// True when the ranks split the tokens (sequence parallelism).
    pub fn splits_tokens(&self) -> bool {
        self.ranks > 1 && self.axis == ShardAxis::Tokens
    }

    /// This rank's equal share of `n` (which the caller checked divides by `ranks`).
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        let each = n / self.ranks;
        self.rank * each..(self.rank + 1) * each
    }

    /// The rows of a column-parallel weight with `n` rows (all of it unless heads split).
    pub fn rows(&self, n: usize) -> WeightPart {
        if self.splits_heads() {
            WeightPart::Rows(self.share(n))
        } else {
            WeightPart::Whole
        }
    }

    /// The columns of a row-parallel weight with `n` columns (all of it unless heads split).
    pub fn cols(&self, n: usize) -> WeightPart {
        if self.splits_heads() {
            WeightPart::Cols(self.share(n))
        } else {
            WeightPart::Whole
        }
    }
}
