//! Constant weights packed once for the products that read them.
//!
//! A product packs its B operand into the GEMM's panels on every call (and, on AMX, splits
//! each f32 value into three bf16 parts); for a weight that is the same work every call. A
//! weight tensor the runtime gives a [`WeightPacks`] ([`CpuTensor::with_packs`]) keeps its packed form beside
//! it once the first product has made it, and later products read that instead. The packs
//! live as long as the weight tensor (and its clones), and their bytes are drawn from a
//! [`PackBudget`] shared by every weight of a run: once it is spent, further weights are
//! packed per call as before. Results are the same bits either way (the packed form is made
//! by the per-call packers; see `kernels::linalg::sgemm`).

use crate::kernels::linalg::PackedWeight;
use crate::CpuTensor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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
}

/// One weight's packed forms, made on first use.
#[derive(Debug)]
pub struct WeightPacks {
    budget: Arc<PackBudget>,
    /// `linear`'s weight `[N, K]` as the GEMM's B = wᵀ, once a product asked for it (`None`
    /// when it did not fit the budget or this CPU's products cannot read packs).
    linear: OnceLock<Option<Arc<PackedWeight>>>,
}

impl WeightPacks {
    /// No packs yet; those made later draw from `budget`.
    pub fn new(budget: &Arc<PackBudget>) -> Arc<WeightPacks> {
        Arc::new(WeightPacks { budget: budget.clone(), linear: OnceLock::new() })
    }

    /// Bytes held by the packs made so far.
    pub fn bytes(&self) -> u64 {
        self.linear.get().and_then(Option::as_ref).map_or(0, |p| p.bytes() as u64)
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
        let pack = self.linear.get_or_init(|| {
            let bytes = PackedWeight::bytes_for(n, k)?;
            if !self.budget.reserve(bytes as u64) {
                return None;
            }
            let packed = PackedWeight::pack(w, bytes);
            if packed.is_none() {
                self.budget.release(bytes as u64);
            }
            packed.map(Arc::new)
        });
        pack.as_ref().filter(|p| p.dims() == (n, k)).cloned()
    }
}

impl Drop for WeightPacks {
    fn drop(&mut self) {
        self.budget.release(self.bytes());
    }
}
