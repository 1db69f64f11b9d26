//! orrery-formats: reading model weights from disk.
//!
//! * [`safetensors`]: validated headers over a memory map, zero-copy tensor slices;
//! * [`torch`]: PyTorch zip checkpoints via a minimal [`zip`] reader and a restricted
//!   [`pickle`] decoder that never imports or calls anything;
//! * [`index`]: sharded checkpoints (`*.index.json` weight maps);
//! * [`folder`]: diffusers / transformers directory layouts and [`open_weights`];
//! * [`inspect`]: summaries for `orrery inspect`;
//! * [`source`]: the [`WeightSource`] trait the runtime consumes.
//!
//! All parsers treat their input as hostile: bounds-checked reads, checked arithmetic, no
//! allocation sized by an unvalidated header field, and errors ([`FormatError`]) that name
//! the file, the tensor or archive entry, and what to do.

pub mod error;
pub mod folder;
pub mod index;
pub mod inspect;
pub mod layout;
pub mod pickle;
mod png_write;
mod reader;
pub mod safetensors;
mod safetensors_write;
pub mod slice;
pub mod source;
pub mod torch;
pub mod zip;

pub use error::FormatError;
pub use folder::{open_file, open_files, open_weights, resolve_weights, WeightsLayout};
pub use index::{open_index, ShardIndex};
pub use inspect::{describe_folder, inspect, inspect_source, Component, FolderDescription, Inspection};
pub use layout::StridedLayout;
pub use png_write::{png_rgb, write_png_rgb};
pub use safetensors::SafetensorsFile;
pub use safetensors_write::{write_safetensors, StreamingSafetensors, TensorToWrite};
pub use slice::{read_tensor_into, tensor_info, SliceAxis, TensorSlice};
pub use source::{
    map_file, CombinedWeights, MappedFile, SharedBytes, SourceReport, TensorBytes, TensorData, TensorInfo,
    TensorProblem, UnknownGlobal, WeightSource,
};
pub use torch::{TorchCheckpoint, TorchTensor};
