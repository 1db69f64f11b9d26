//! Constant weights packed once for the products that read them.
//!
//! A product packs its operands into the GEMM's panels on every call (and, on AMX, splits
//! each f32 value into three bf16 parts); for a weight that is the same work every call. A
//! weight tensor the runtime gives a [`WeightPacks`] ([`CpuTensor::with_packs`]) keeps the
//! packed forms the first products made: `linear`'s weight as the GEMM's B, and on AMX a
//! convolution's weights as its A (the whole depth, or each half of a depth split). Later
//! products read those instead. The packs live as long as the weight tensor (and its clones
//! and the resolver that made it), and their bytes are drawn from a [`PackBudget`] shared by
//! the process's weights: once it is spent, further weights are packed per call as before.
//! Results are the same bits either way (the packed forms are made by the per-call packers;
//! see `kernels::linalg::sgemm`).

use crate::kernels::linalg::{PackedWeight, PackedWeightA};
use crate::CpuTensor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The bytes packed weights may hold together.
#[derive(Debug)]
pub struct PackBudget {
    limit: u64,
    used: AtomicU64,
}

impl PackBudget {
    /// A budget of `limit` bytes (0 packs nothing).
    pub fn new(limit: u64) -> Arc<PackBudget> {
        Arc::new(PackBudget { limit, used: AtomicU64::new(0) })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held by the packs alive now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget when they fit.
    fn reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Takes `bytes` from the budget for something other than a pack (values the runtime
    /// keeps between runs) when they fit; dropping the hold gives them back.
    pub fn hold(self: &Arc<Self>, bytes: u64) -> Option<BudgetHold> {
        self.reserve(bytes).then(|| BudgetHold { budget: self.clone(), bytes })
    }
}

/// Bytes taken from a [`PackBudget`] until dropped ([`PackBudget::hold`]).
#[derive(Debug)]
pub struct BudgetHold {
    budget: Arc<PackBudget>,
    bytes: u64,
}

impl BudgetHold {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// One weight's packed forms, made on first use.
#[derive(Debug)]
pub struct WeightPacks {
    budget: Arc<PackBudget>,
    /// `linear`'s weight `[N, K]` as the GEMM's B = wᵀ, once a product asked for it (`None`
    /// when it did not fit the budget or this CPU's products cannot read packs).
    linear: OnceLock<Option<Arc<PackedWeight>>>,
    /// A convolution's weights `[Cout, depth]` as the GEMM's A, one pack per block of columns
    /// asked for (the whole depth, or the halves of a depth split).
    conv: Mutex<Vec<ConvPack>>,
}

/// Columns `k0 .. k0 + k` of a convolution's weight matrix, packed once asked for.
type ConvPack = (usize, usize, Arc<OnceLock<Option<Arc<PackedWeightA>>>>);

impl WeightPacks {
    /// No packs yet; those made later draw from `budget`.
    pub fn new(budget: &Arc<PackBudget>) -> Arc<WeightPacks> {
        Arc::new(WeightPacks { budget: budget.clone(), linear: OnceLock::new(), conv: Mutex::new(Vec::new()) })
    }

    /// Bytes held by the packs made so far.
    pub fn bytes(&self) -> u64 {
        let linear = self.linear.get().and_then(Option::as_ref).map_or(0, |p| p.bytes() as u64);
        let conv = self.conv.lock().expect("conv packs poisoned");
        let conv: u64 = conv.iter().filter_map(|(_, _, cell)| cell.get()?.as_ref()).map(|p| p.bytes() as u64).sum();
        linear + conv
    }

    /// `w` (`linear`'s weight, the tensor these packs belong to) packed as B = wᵀ, made now
    /// if this is the first ask. `None` when `w` is not a dense `[N, K]` f32 or bf16 matrix
    /// (a view these packs were not made for), when the pack does not fit the budget, or when
    /// products here read no packs.
    pub(crate) fn linear(&self, w: &CpuTensor) -> Option<Arc<PackedWeight>> {
        let dense = w.shape().len() == 2 && w.is_contiguous() && w.offset() == 0 && w.numel() == w.buffer().len();
        if !dense {
            return None;
        }
        let (n, k) = (w.shape()[0], w.shape()[1]);
        let pack =
            self.linear.get_or_init(|| self.make(PackedWeight::bytes_for(n, k), |bytes| PackedWeight::pack(w, bytes)));
        pack.as_ref().filter(|p| p.dims() == (n, k)).cloned()
    }

    /// Columns `k0 .. k0 + k` of `w` (a convolution's weights, the tensor these packs belong
    /// to, read as `[Cout, depth]`) packed as the GEMM's A, made now if this is the first ask.
    /// `None` when `w` is not a dense f32 tensor (a view these packs were not made for), when
    /// the pack does not fit the budget, or when products here read A in place.
    pub(crate) fn conv_lhs(&self, w: &CpuTensor, k0: usize, k: usize) -> Option<Arc<PackedWeightA>> {
        let dense = w.is_contiguous() && w.offset() == 0 && w.numel() == w.buffer().len() && !w.shape().is_empty();
        if !dense || w.data::<f32>().is_none() {
            return None;
        }
        let m = w.shape()[0];
        // The cell is taken under the lock and filled outside it: packing runs on the pool,
        // whose threads may meanwhile ask for this weight's other blocks.
        let cell = {
            let mut conv = self.conv.lock().expect("conv packs poisoned");
            match conv.iter().find(|(at, len, _)| (*at, *len) == (k0, k)) {
                Some((_, _, cell)) => cell.clone(),
                None => {
                    let cell = Arc::new(OnceLock::new());
                    conv.push((k0, k, cell.clone()));
                    cell
                }
            }
        };
        let pack = cell
            .get_or_init(|| self.make(PackedWeightA::bytes_for(m, k), |bytes| PackedWeightA::pack(w, m, k0, k, bytes)));
        pack.as_ref().filter(|p| p.block() == (m, k0, k)).cloned()
    }

    /// A pack of `bytes` (`None`: none is made here) by `pack`, when it fits the budget.
    fn make<T>(&self, bytes: Option<usize>, pack: impl FnOnce(usize) -> Option<T>) -> Option<Arc<T>> {
        let bytes = bytes?;
        if !self.budget.reserve(bytes as u64) {
            return None;
        }
        let packed = pack(bytes);
        if packed.is_none() {
            self.budget.release(bytes as u64);
        }
        packed.map(Arc::new)
    }
}

impl Drop for WeightPacks {
    fn drop(&mut self) {
        self.budget.release(self.bytes());
    }
}
