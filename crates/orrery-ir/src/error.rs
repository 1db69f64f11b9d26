use thiserror::Error;

/// Errors from building or evaluating a graph. Each names the node and op involved.
#[derive(Debug, Error)]
pub enum IrError {
    /// An op rejected its inputs while the graph was being built.
    #[error("node `{node}` ({op}): {reason}; inputs: {inputs}")]
    InvalidOp { node: String, op: String, inputs: String, reason: String },
    #[error("graph input `{0}` is declared twice")]
    DuplicateInput(String),
    #[error("graph output `{0}` is declared twice")]
    DuplicateOutput(String),
    #[error("weight `{name}` is declared as {first} and again as {second}")]
    WeightMismatch { name: String, first: String, second: String },
    #[error("node id {0} does not exist in this graph")]
    UnknownNode(usize),
    #[error("the graph has no outputs")]
    NoOutputs,
    #[error("reference evaluation of node `{node}` ({op}) failed: {reason}")]
    Eval { node: String, op: String, reason: String },
    #[error("missing value for {kind} `{name}` (expected {expected})")]
    MissingValue { kind: &'static str, name: String, expected: String },
}
