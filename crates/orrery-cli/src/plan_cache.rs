//! `--plan-cache DIR` / `--no-plan-cache`: where `generate` and `plan` keep compiled plans
//! across runs (`orrery_compiler::PlanStore`). Default: `$ORRERY_PLAN_CACHE`, else
//! `$XDG_CACHE_HOME/orrery/plans`, else `~/.cache/orrery/plans`. A directory that cannot be
//! created or written is a warning and the run compiles as before. The folder keeps at most
//! `$ORRERY_PLAN_CACHE_MAX` (e.g. `500MB`; default 2 GiB) of plans, the least recently used
//! deleted first.

use orrery_compiler::PlanStore;
use orrery_pipeline::CosmosPipeline;
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct PlanCacheArgs {
    /// Keep compiled plans in this directory and reuse them in later runs (default:
    /// $ORRERY_PLAN_CACHE, else $XDG_CACHE_HOME/orrery/plans, else ~/.cache/orrery/plans).
    #[arg(long, value_name = "DIR")]
    plan_cache: Option<PathBuf>,
    /// Compile every plan, reading and writing no plan cache.
    #[arg(long, conflicts_with = "plan_cache")]
    no_plan_cache: bool,
}

impl PlanCacheArgs {
    /// The directory to use, `None` when disabled.
    fn dir(&self) -> Option<PathBuf> {
        if self.no_plan_cache {
            return None;
        }
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        self.plan_cache
            .clone()
            .or_else(|| var("ORRERY_PLAN_CACHE"))
            .or_else(|| Some(crate::embedded::cache_root().join("plans")))
    }

    /// Gives `pipeline` its plan store; any problem is a warning on stderr, never an error.
    pub fn attach(&self, pipeline: &mut CosmosPipeline) {
        let Some(dir) = self.dir() else { return };
        let max = match std::env::var("ORRERY_PLAN_CACHE_MAX") {
            Ok(v) if !v.is_empty() => match orrery_runtime::parse_byte_size(&v) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("orrery: warning: ORRERY_PLAN_CACHE_MAX: {e}; keeping the default 2 GiB");
                    orrery_compiler::DEFAULT_MAX_BYTES
                }
            },
            _ => orrery_compiler::DEFAULT_MAX_BYTES,
        };
        let attached = PlanStore::open(&dir).and_then(|store| pipeline.set_plan_store(store.with_max_bytes(max)));
        if let Err(w) = attached {
            eprintln!("orrery: warning: {w}; plans are compiled and not kept");
        }
    }
}

/// Logs the plan store's warnings (unusable files are recompiled and replaced).
pub fn report_warnings(pipeline: &CosmosPipeline) {
    for w in pipeline.take_plan_cache_warnings() {
        eprintln!("orrery: warning: {w}; compiled instead");
    }
}

/// The `plan_cache` object of `--json` outputs.
pub fn stats_json(pipeline: &CosmosPipeline) -> serde_json::Value {
    let s = pipeline.plan_cache_stats();
    serde_json::json!({
        "dir": pipeline.plan_store().map(|s| s.dir().display().to_string()),
        "compiled": s.compiled, "disk_hits": s.disk_hits, "disk_misses": s.disk_misses, "disk_stored": s.disk_stored,
    })
}
