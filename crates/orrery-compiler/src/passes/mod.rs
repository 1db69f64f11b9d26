//! Rewrite passes: rules propose labelled [`Patch`]es, the [`Optimizer`] applies them.
//!
//! A [`Rule`] looks at a graph and returns the first rewrite it finds (in graph order) as a
//! patch; it never edits the graph. The optimizer applies the patch by rebuilding the graph
//! (`patch::apply`), optionally verifies the result, logs `(rule, label)` and asks again, rule
//! after rule, until a whole sweep over the rules changes nothing (the fixpoint).
//! [`Optimizer::stopping_at`] stops after exactly `n` rewrites, so a bad rewrite can be
//! bisected; [`Optimizer::verify_each`] runs [`Graph::verify`] after every applied patch (tests
//! turn it on). Rewritten nodes are named `<source>.<suffix>`, so dumps trace back.
//!
//! One patch at a time keeps rules simple and the result independent of batching: each
//! application costs one scan and one rebuild of the graph (linear in its size).
//!
//! Rules never name a model: each matches an op pattern stated in its doc line.

mod canonicalize;
mod const_fold;
mod cse;
mod dce;
mod fuse_elementwise;
mod fuse_epilogue;
mod hoist_permute;
mod lower_norms;
pub mod patch;
mod recognize_attention;
mod split_weights;

pub use canonicalize::Canonicalize;
pub use const_fold::{ConstFold, MAX_FOLD_ELEMENTS};
pub use cse::Cse;
pub use dce::Dce;
pub use fuse_elementwise::FuseElementwise;
pub use fuse_epilogue::FuseEpilogue;
pub use hoist_permute::{HoistThroughPermute, PermuteIntoEpilogue};
pub use lower_norms::LowerNorms;
pub use patch::{Patch, Value};
pub use recognize_attention::RecognizeAttention;
pub use split_weights::{slice_count, SplitConvWeights, MIN_SPLIT_ROWS};

use orrery_ir::{Graph, IrError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A rewrite rule.
pub trait Rule {
    /// Short name used in logs and errors (`"cse"`, `"canonicalize"`).
    fn name(&self) -> &str;

    /// The first rewrite this rule finds in `graph`, built against `graph`, or `None` when the
    /// rule has nothing to do. Must not propose a patch again once it has been applied (the
    /// optimizer errors if a rule keeps firing).
    fn propose(&self, graph: &Graph) -> Option<Patch>;
}

/// One applied patch, in application order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRewrite {
    pub rule: String,
    pub label: String,
}

/// What the optimizer did, in order.
pub type RewriteLog = Vec<AppliedRewrite>;

/// Errors of the optimizer; each names the rule and patch involved.
#[derive(Debug, Error)]
pub enum PassError {
    #[error("the graph to optimize is invalid: {0}")]
    InvalidInput(#[source] Box<IrError>),
    #[error("rule `{rule}` proposed a malformed patch `{label}`: {reason}")]
    BadPatch { rule: String, label: String, reason: String },
    #[error("rule `{rule}` broke the graph with patch `{label}`: {source}")]
    Verify {
        rule: String,
        label: String,
        #[source]
        source: Box<IrError>,
    },
    #[error(
        "rule `{rule}` did not converge: still firing after {rewrites} rewrites (last: `{label}`); \
         rerun with stopping_at to bisect"
    )]
    Diverged { rule: String, rewrites: usize, label: String },
}

/// Options of [`optimize`].
#[derive(Clone, Debug, Default)]
pub struct OptimizeOptions {
    /// Stop after this many rewrites (bisecting a bad rule); `None` runs to the fixpoint.
    pub stop_after: Option<usize>,
    /// Verify the graph after every applied patch (tests); the result is always verified.
    pub verify_each: bool,
    /// Also fuse elementwise groups ([`Optimizer::fusing_rules`]).
    pub fuse: bool,
}

/// Runs rules to a fixpoint.
pub struct Optimizer {
    rules: Vec<Box<dyn Rule>>,
    stop_after: Option<usize>,
    verify_each: bool,
}

impl Optimizer {
    /// An optimizer applying `rules` in this order, sweep after sweep.
    pub fn new(rules: Vec<Box<dyn Rule>>) -> Optimizer {
        Optimizer { rules, stop_after: None, verify_each: false }
    }

    /// Canonicalisation, constant folding, common-subexpression and dead-code elimination.
    pub fn default_rules() -> Vec<Box<dyn Rule>> {
        vec![Box::new(Canonicalize), Box::new(ConstFold), Box::new(Cse), Box::new(Dce)]
    }

    /// The default rules, then fusion (which runs on the simplified graph): attention
    /// recognition first (elementwise fusion would otherwise swallow its scale and mask), then
    /// normalisations lowered to row programs, elementwise groups (row programs included), row
    /// programs feeding attention moved above the head permute, those groups folded into the
    /// epilogue of the op that feeds them, and finally the head permute folded into that
    /// epilogue's storage. Each rule runs to exhaustion within a sweep, so this order holds.
    pub fn fusing_rules() -> Vec<Box<dyn Rule>> {
        let mut rules = Optimizer::default_rules();
        rules.push(Box::new(RecognizeAttention));
        rules.push(Box::new(LowerNorms));
        rules.push(Box::new(FuseElementwise));
        rules.push(Box::new(HoistThroughPermute));
        rules.push(Box::new(FuseEpilogue));
        rules.push(Box::new(PermuteIntoEpilogue));
        rules
    }

    /// Stop after exactly `n` rewrites (or at the fixpoint, if it comes first).
    pub fn stopping_at(mut self, n: usize) -> Optimizer {
        self.stop_after = Some(n);
        self
    }

    /// Run [`Graph::verify`] after every applied patch; a failure names the rule and patch.
    pub fn verify_each(mut self, on: bool) -> Optimizer {
        self.verify_each = on;
        self
    }

    /// Optimizes `graph`. The input is verified first and the result last.
    pub fn run(&self, graph: Graph) -> Result<(Graph, RewriteLog), PassError> {
        graph.verify().map_err(|e| PassError::InvalidInput(Box::new(e)))?;
        let mut graph = graph;
        let mut log = RewriteLog::new();
        // A rule that converges removes or simplifies something with every rewrite, so the
        // number of rewrites is bounded by a multiple of the graph's size; the cap only stops a
        // rule that loops.
        let cap = 8 * graph.len() + 64;
        'sweeps: loop {
            let mut changed = false;
            for rule in &self.rules {
                loop {
                    if self.stop_after.is_some_and(|n| log.len() >= n) {
                        break 'sweeps;
                    }
                    let Some(patch) = rule.propose(&graph) else { break };
                    if patch.is_empty() {
                        break;
                    }
                    let fail = |reason: String| PassError::BadPatch {
                        rule: rule.name().to_string(),
                        label: patch.label().to_string(),
                        reason,
                    };
                    graph = patch::apply(&graph, &patch).map_err(fail)?;
                    if self.verify_each {
                        graph.verify().map_err(|source| PassError::Verify {
                            rule: rule.name().to_string(),
                            label: patch.label().to_string(),
                            source: Box::new(source),
                        })?;
                    }
                    log.push(AppliedRewrite { rule: rule.name().to_string(), label: patch.label().to_string() });
                    changed = true;
                    if log.len() > cap {
                        return Err(PassError::Diverged {
                            rule: rule.name().to_string(),
                            rewrites: log.len(),
                            label: patch.label().to_string(),
                        });
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let last = log.last().map_or(("-", "-"), |r| (r.rule.as_str(), r.label.as_str()));
        graph.verify().map_err(|source| PassError::Verify {
            rule: last.0.into(),
            label: last.1.into(),
            source: Box::new(source),
        })?;
        Ok((graph, log))
    }
}

/// Optimizes `graph` with the default rules ([`Optimizer::default_rules`]).
pub fn optimize(graph: Graph, options: &OptimizeOptions) -> Result<(Graph, RewriteLog), PassError> {
    let rules = if options.fuse { Optimizer::fusing_rules() } else { Optimizer::default_rules() };
    let mut optimizer = Optimizer::new(rules).verify_each(options.verify_each);
    if let Some(n) = options.stop_after {
        optimizer = optimizer.stopping_at(n);
    }
    optimizer.run(graph)
}
