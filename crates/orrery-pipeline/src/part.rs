//! One component folder of a pipeline: its builder, its weight store, and the plans compiled
//! for it so far, per method, input shapes and [`Variant`] (convolutions split for a memory
//! budget, a parallel shard), each compiled once or read from the plan store.

use crate::denoise::Precision;
use crate::disk_plans::{options, DiskPlans};
use crate::PipelineError;
use orrery_compiler::passes::{Rule, SplitConvWeights};
use orrery_compiler::{compile_with, component_identity, Plan};
use orrery_formats::WeightSource;
use orrery_ir::DType;
use orrery_models::{load_component, Component, Shard, ShardAxis, WeightTypes};
use orrery_runtime::{FormatWeights, Session};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A plan's key: the method, the input shapes by name and the variant.
type PlanKey = (String, BTreeMap<String, Vec<usize>>, Variant);

/// How a plan departs from the component's plain graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    /// Convolutions whose weights exceed this many bytes are split (`MemoryPlan::weight_split`).
    pub(crate) weight_split: Option<u64>,
    /// The parallel shard the plan computes (heads or tokens; whole on one rank).
    pub(crate) shard: Shard,
}

impl Variant {
    pub(crate) const PLAIN: Variant = Variant { weight_split: None, shard: Shard::WHOLE };

    pub(crate) fn split(weight_split: Option<u64>) -> Variant {
        Variant { weight_split, ..Variant::PLAIN }
    }
}

/// One component folder: its builder, its weights, and the plans compiled so far.
pub(crate) struct Part {
    pub(crate) dir: PathBuf,
    /// Its config and weight index by content ([`component_identity`]): the plan store's key.
    pub(crate) identity: String,
    pub(crate) component: Box<dyn Component>,
    pub(crate) weights: Arc<FormatWeights>,
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
    /// How many plans this part compiled (not read from the store).
    pub(crate) compiled: AtomicUsize,
    /// Compiled plans kept on disk across runs, shared by the pipeline's parts.
    pub(crate) disk: Option<Arc<DiskPlans>>,
}

impl Part {
    pub(crate) fn load(root: &Path, name: &str) -> Result<Part, PipelineError> {
        let dir = root.join(name);
        if !dir.join("config.json").is_file() {
            return Err(PipelineError::Invalid(format!(
                "{}: the pipeline has no `{name}` component (expected {}/config.json)",
                root.display(),
                dir.display()
            )));
        }
        let component = load_component(&dir)?;
        let weights = Arc::new(FormatWeights::new(orrery_formats::open_weights(&dir)?));
        let config_path = dir.join("config.json");
        let config = std::fs::read(&config_path)
            .map_err(|e| PipelineError::Config { path: config_path.display().to_string(), reason: e.to_string() })?;
        let source: &dyn WeightSource = weights.source();
        let mut index: Vec<_> = source.names().iter().filter_map(|n| source.info(n)).collect();
        index.sort_by(|a, b| a.name.cmp(&b.name));
        let identity =
            component_identity(&config, index.iter().map(|i| (i.name.as_str(), i.dtype, i.shape.as_slice())));
        Ok(Part {
            dir,
            identity,
            component,
            weights,
            plans: Mutex::default(),
            compiled: AtomicUsize::new(0),
            disk: None,
        })
    }

    /// The plan of `method` at `shapes`, weights typed as stored, in `variant` (convolutions
    /// split, a parallel shard); compiled once and kept (an estimate and the run share it).
    pub(crate) fn plan(
        &self,
        method: &str,
        shapes: &[(&str, &[usize])],
        variant: Variant,
    ) -> Result<Arc<Plan>, PipelineError> {
        // A sequence-parallel plan is the same on every rank (the runtime supplies the rank).
        let variant = match variant.shard {
            Shard { axis: ShardAxis::Tokens, ranks, .. } => Variant { shard: Shard::tokens(0, ranks), ..variant },
            _ => variant,
        };
        let by_name: BTreeMap<String, Vec<usize>> = shapes.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
        let key = (method.to_string(), by_name, variant);
        if let Some(plan) = self.plans.lock().expect("plan cache poisoned").get(&key) {
            return Ok(plan.clone());
        }
        let stored_method = match variant.shard {
            Shard { ranks: 1, .. } => method.to_string(),
            Shard { rank, ranks, axis: ShardAxis::Heads } => {
                format!("{method} (tensor-parallel rank {rank} of {ranks})")
            }
            Shard { ranks, .. } => format!("{method} (sequence-parallel over {ranks} ranks)"),
        };
        let stored = self
            .disk
            .as_ref()
            .map(|disk| (disk, disk.key(&self.identity, &stored_method, &key.1, variant.weight_split)));
        let plan = match stored.as_ref().and_then(|(disk, k)| disk.lookup(k)) {
            Some(plan) => plan,
            None => {
                let source: &dyn WeightSource = self.weights.source();
                let lookup = |n: &str| source.info(n).map(|i| (i.dtype, i.shape.clone()));
                let types = WeightTypes::Checkpoint(&lookup);
                let graph = self.component.build_sharded(method, &key.1, &types, variant.shard)?;
                // A split that changes nothing is the unsplit plan (not compiled twice).
                if let Some(max_bytes) = variant.weight_split {
                    if (SplitConvWeights { max_bytes }).propose(&graph).is_none() {
                        let plan = self.plan(method, shapes, Variant { weight_split: None, ..variant })?;
                        self.plans.lock().expect("plan cache poisoned").insert(key, plan.clone());
                        return Ok(plan);
                    }
                }
                let plan = compile_with(graph, &options(variant.weight_split))?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                if let Some((disk, k)) = &stored {
                    disk.keep(k, &plan);
                }
                plan
            }
        };
        let plan = Arc::new(plan);
        self.plans.lock().expect("plan cache poisoned").insert(key, plan.clone());
        Ok(plan)
    }

    /// The dtype the reference runs this component in: its checkpoint's floating-point dtype
    /// (bf16 when most of its weight bytes are bf16).
    pub(crate) fn precision(&self) -> Precision {
        let source: &dyn WeightSource = self.weights.source();
        let (mut bf16, mut total) = (0u64, 0u64);
        for info in source.names().iter().filter_map(|n| source.info(n)) {
            total += info.byte_len as u64;
            if info.dtype == DType::BF16 {
                bf16 += info.byte_len as u64;
            }
        }
        if 2 * bf16 > total {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    /// How many plans the part holds (compiled or read from the store).
    pub(crate) fn plan_count(&self) -> usize {
        self.plans.lock().expect("plan cache poisoned").len()
    }

    /// A session of [`Part::plan`].
    pub(crate) fn session(
        &self,
        method: &str,
        shapes: &[(&str, &[usize])],
        variant: Variant,
        threads: usize,
    ) -> Result<Session, PipelineError> {
        Ok(Session::new((*self.plan(method, shapes, variant)?).clone(), self.weights.clone(), threads)?)
    }
}
