//! The pipeline's side of the on-disk plan store (`orrery_compiler::PlanStore`): the key of a
//! component's plan, lookups and writes counted for `--json`, and the store's warnings kept
//! for the caller to log (an unusable file is a miss, a failed write leaves the plan unstored;
//! neither fails a run).

use orrery_compiler::{binary_fingerprint, CompileOptions, Plan, PlanStore, StoreKey, StoreWarning};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The compile options of a pipeline plan (part of each key): fused, in place, and with the
/// weight split a memory budget asked for (`MemoryPlan::weight_split`).
pub(crate) fn options(weight_split: Option<u64>) -> CompileOptions {
    CompileOptions {
        memory: orrery_compiler::MemoryOptions { max_arena_bytes: None, allow_in_place: true },
        passes: orrery_compiler::Passes::Fuse,
        stop_after_rewrites: None,
        split_weights_over: weight_split,
    }
}

/// What the plan caches did so far (see `CosmosPipeline::plan_cache_stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanCacheStats {
    /// Plans compiled from their graphs.
    pub compiled: usize,
    /// Plans read from the plan store.
    pub disk_hits: usize,
    /// Plans looked up in the plan store and not found there (or found unusable).
    pub disk_misses: usize,
    /// Plans written to the plan store.
    pub disk_stored: usize,
}

/// A plan store with what it did for one pipeline (shared by its components).
pub(crate) struct DiskPlans {
    store: PlanStore,
    /// The running binary's fingerprint (part of every key).
    binary: String,
    hits: AtomicUsize,
    misses: AtomicUsize,
    stored: AtomicUsize,
    warnings: Mutex<Vec<StoreWarning>>,
}

impl DiskPlans {
    /// Refused when the running executable cannot be identified: no stored plan could then be
    /// trusted.
    pub(crate) fn new(store: PlanStore) -> Result<DiskPlans, StoreWarning> {
        let Some(binary) = binary_fingerprint() else {
            let reason = "cannot identify the running executable, so stored plans are not used".to_string();
            return Err(StoreWarning { path: store.dir().to_path_buf(), reason });
        };
        Ok(DiskPlans {
            store,
            binary,
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
            stored: AtomicUsize::new(0),
            warnings: Mutex::default(),
        })
    }

    pub(crate) fn store(&self) -> &PlanStore {
        &self.store
    }

    /// The key of the plan of component `identity`'s `method` at `shapes`.
    pub(crate) fn key(
        &self,
        identity: &str,
        method: &str,
        shapes: &BTreeMap<String, Vec<usize>>,
        weight_split: Option<u64>,
    ) -> StoreKey {
        StoreKey {
            binary: self.binary.clone(),
            component: identity.to_string(),
            method: method.to_string(),
            shapes: shapes.clone(),
            options: options(weight_split),
        }
    }

    /// The stored plan of `key`, if there is a usable one.
    pub(crate) fn lookup(&self, key: &StoreKey) -> Option<Plan> {
        let found = self.store.load(key).unwrap_or_else(|w| {
            self.warn(w);
            None
        });
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Writes a compiled plan for later runs.
    pub(crate) fn keep(&self, key: &StoreKey, plan: &Plan) {
        match self.store.store(key, plan) {
            Ok(()) => _ = self.stored.fetch_add(1, Ordering::Relaxed),
            Err(w) => self.warn(w),
        }
    }

    /// `PlanCacheStats` with `compiled` plans.
    pub(crate) fn stats(disk: Option<&DiskPlans>, compiled: usize) -> PlanCacheStats {
        let count = |f: fn(&DiskPlans) -> &AtomicUsize| disk.map_or(0, |d| f(d).load(Ordering::Relaxed));
        PlanCacheStats {
            compiled,
            disk_hits: count(|d| &d.hits),
            disk_misses: count(|d| &d.misses),
            disk_stored: count(|d| &d.stored),
        }
    }

    /// The warnings since the last call.
    pub(crate) fn take_warnings(&self) -> Vec<StoreWarning> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn warn(&self, w: StoreWarning) {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).push(w);
    }
}
