//! Where a run writes a kernel's output: over an operand that dies there (elementwise kernels
//! the plan put in place), at its slot in the session's activation arena, or, failing both,
//! into memory the kernel allocates. The plan decided the places; these checks only confirm
//! that each is free to use now.

use orrery_compiler::{Kernel, Storage};
use orrery_cpu::{Arena, ArenaValues, Buffer, CpuTensor};
use orrery_ir::{DType, TensorType};
use std::sync::Arc;

/// The operand `kernel` writes over, taken out of `values` with its input position: when the
/// plan put the kernel in place over it, it dies at this kernel, it is read once, and nothing
/// else holds its buffer (no view, no kept copy, no caller).
pub(crate) fn take_in_place_operand(kernel: &Kernel, values: &mut [Option<CpuTensor>]) -> Option<(usize, CpuTensor)> {
    let Some(Storage::InPlace { over }) = kernel.buffer.map(|slot| slot.storage) else { return None };
    let mut reads = kernel.inputs.iter().enumerate().filter(|(_, &i)| i == over);
    let (at, _) = reads.next()?;
    let sole = reads.next().is_none()
        && kernel.frees.contains(&over)
        && values[over.0].as_ref().is_some_and(|t| Arc::strong_count(t.buffer()) == 1);
    sole.then(|| values[over.0].take()).flatten().map(|operand| (at, operand))
}

/// `kernel`'s own slot in `arena` (an f32 output with a buffer of its own), lent for the
/// kernel to write; `None` when the slot is still lent (to an output of an earlier run the
/// caller kept).
pub(crate) fn lend_slot(arena: &Arc<Arena>, kernel: &Kernel, ty: &TensorType) -> Option<ArenaValues> {
    let slot = kernel.buffer.filter(|slot| slot.storage == Storage::Owned && !kernel.is_view)?;
    if ty.dtype != DType::F32 {
        return None;
    }
    arena.lend(usize::try_from(slot.offset).ok()?, ty.shape.numel())
}

/// Whether `out` was written at byte `offset` of `arena`.
pub(crate) fn is_at(out: &CpuTensor, arena: &Arc<Arena>, offset: usize) -> bool {
    matches!(&**out.buffer(), Buffer::Arena(values) if values.is_in(arena) && values.offset() == offset)
}
