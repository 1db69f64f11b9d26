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
        let dtype = match self {
            WeightTypes::Renamed { inner, rename } => return inner.declare(b, &rename(name), shape),
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
        Ok(b.weight(name, dtype, shape.to_vec())?)
    }
}
