//! NVIDIA Cosmos building blocks (the full models arrive with their issues).

mod dit_block;

pub use dit_block::{dit_block, DitBlockConfig, DitBlockInputs};
