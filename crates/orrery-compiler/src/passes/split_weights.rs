//! Splits a convolution whose weights are too big to stream through a small ring into convs
//! over output-channel slices of its weight and bias, concatenated along channels:
//! `conv(x, w, b)` → `concat(conv(x, w@rows[0:k], b@rows[0:k]), conv(x, w@rows[k:n], …), axis 1)`.
//!
//! Each slice is a separate weight (`name@rows[a:b]`, read on its own by the weight store), so
//! the ring needs to hold one slice, not the whole weight. The output is bit for bit the
//! unsplit conv's: every output channel is the same dot products over the same inputs, as long
//! as the CPU's GEMM sums them in the same blocks. It picks its K-blocking from the problem
//! size for problems of at most 64 × 64 and from K alone above, so a slice never has fewer
//! than [`MIN_SPLIT_ROWS`] channels (and a conv of fewer channels is never split).
//!
//! Matches: `conv` with one group whose weight (and bias) are weights used by it alone, and
//! whose weight and bias bytes (each aligned to [`crate::LOAD_ALIGN`]) exceed `max_bytes`.
//! Applied only when a memory budget needs it (`CompileOptions::split_weights_over`).

use super::{Patch, Rule, Value};
use crate::LOAD_ALIGN;
use orrery_ir::{Graph, NodeId, NodeKind, Op, TensorType};

/// The fewest output channels of one slice (see the module docs).
pub const MIN_SPLIT_ROWS: usize = 65;

/// The rule, for weight sets over `max_bytes`.
pub struct SplitConvWeights {
    pub max_bytes: u64,
}

fn aligned(bytes: u64) -> u64 {
    bytes.div_ceil(LOAD_ALIGN) * LOAD_ALIGN
}

/// Bytes of `rows` rows of `ty` (split along axis 0), aligned.
fn rows_bytes(ty: &TensorType, rows: usize) -> u64 {
    let dims = ty.shape.dims();
    aligned(ty.size_bytes() / dims[0] as u64 * rows as u64)
}

/// How many balanced slices a weight of `channels` rows (and an optional bias) is cut into so
/// that each slice's set fits `max_bytes`; as many as allowed when none fits; `None` when the
/// whole already fits or cannot be cut.
pub fn slice_count(weight: &TensorType, bias: Option<&TensorType>, max_bytes: u64) -> Option<usize> {
    let channels = weight.shape.dims()[0];
    let set = |rows: usize| rows_bytes(weight, rows) + bias.map_or(0, |b| rows_bytes(b, rows));
    let most = channels / MIN_SPLIT_ROWS;
    if set(channels) <= max_bytes || most < 2 {
        return None;
    }
    // Balanced slices differ by one channel at most: the biggest has ⌈channels / n⌉.
    Some((2..=most).find(|&n| set(channels.div_ceil(n)) <= max_bytes).unwrap_or(most))
}

/// The weight node behind operand `id` when it is a whole (unsliced) weight used once.
fn sole_weight(graph: &Graph, uses: &[usize], id: NodeId) -> Option<NodeId> {
    let node = graph.node(id);
    (matches!(node.kind, NodeKind::Weight) && uses[id.0] == 1 && !node.name.contains('@')).then_some(id)
}

impl Rule for SplitConvWeights {
    fn name(&self) -> &str {
        "split-conv-weights"
    }

    fn propose(&self, graph: &Graph) -> Option<Patch> {
        let uses = graph.use_counts();
        for id in graph.ids() {
            let node = graph.node(id);
            let Some(Op::Conv(params)) = node.op() else { continue };
            if params.groups != 1 {
                continue;
            }
            let Some(w) = node.inputs.get(1).and_then(|&w| sole_weight(graph, &uses, w)) else { continue };
            let bias = match params.has_bias {
                true => match node.inputs.get(2).and_then(|&b| sole_weight(graph, &uses, b)) {
                    Some(b) => Some(b),
                    None => continue,
                },
                false => None,
            };
            let (w_ty, b_ty) = (&graph.node(w).ty, bias.map(|b| &graph.node(b).ty));
            let Some(n) = slice_count(w_ty, b_ty, self.max_bytes) else { continue };
            let channels = w_ty.shape.dims()[0];
            let mut patch = Patch::new(format!("split the weights of `{}` into {n} output-channel slices", node.name));
            let slice_ty = |ty: &TensorType, rows: usize| {
                let mut dims = ty.shape.dims().to_vec();
                dims[0] = rows;
                TensorType::new(ty.dtype, dims)
            };
            let mut parts = Vec::with_capacity(n);
            for i in 0..n {
                let (a, b) = (i * channels / n, (i + 1) * channels / n);
                let slice = |of: NodeId| format!("{}@rows[{a}:{b}]", graph.node(of).name);
                let mut inputs = vec![Value::Existing(node.inputs[0]), patch.weight(slice(w), slice_ty(w_ty, b - a))];
                if let (Some(bias), Some(ty)) = (bias, b_ty) {
                    inputs.push(patch.weight(slice(bias), slice_ty(ty, b - a)));
                }
                match patch.op(graph, id, &format!("rows{a}"), Op::Conv(params.clone()), &inputs) {
                    Ok(part) => parts.push(part),
                    Err(_) => return None,
                }
            }
            let concat = patch.op(graph, id, "concat", Op::Concat { axis: 1 }, &parts).ok()?;
            patch.replace(id, concat);
            return Some(patch);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::Optimizer;
    use orrery_ir::{ConvPadMode, ConvParams, DType, GraphBuilder};

    fn conv_graph(cout: usize) -> Graph {
        let mut g = GraphBuilder::new();
        let x = g.input("x", DType::F32, vec![1, 8, 4, 6, 6]).unwrap();
        let w = g.weight("conv.weight", DType::BF16, vec![cout, 8, 3, 1, 1]).unwrap();
        let b = g.weight("conv.bias", DType::F32, vec![cout]).unwrap();
        let params = ConvParams {
            stride: vec![1; 3],
            dilation: vec![1; 3],
            padding: vec![(2, 0), (0, 0), (0, 0)],
            pad_mode: ConvPadMode::Replicate,
            groups: 1,
            has_bias: true,
        };
        let y = g.op("conv", Op::Conv(params), &[x, w, b]).unwrap();
        g.output("y", y).unwrap();
        g.finish().unwrap()
    }

    fn split(graph: Graph, max_bytes: u64) -> Graph {
        Optimizer::new(vec![Box::new(SplitConvWeights { max_bytes })]).verify_each(true).run(graph).unwrap().0
    }

    fn weights(graph: &Graph) -> Vec<(String, Vec<usize>)> {
        graph.weights().map(|(_, n)| (n.name.clone(), n.ty.shape.dims().to_vec())).collect()
    }

    #[test]
    fn an_oversized_conv_becomes_balanced_output_channel_slices_and_a_concat() {
        // 200 channels × 24 bf16 values = 9600 B of weight, 800 B of bias.
        let graph = split(conv_graph(200), 6000);
        assert_eq!(
            weights(&graph),
            vec![
                ("conv.weight@rows[0:100]".to_string(), vec![100, 8, 3, 1, 1]),
                ("conv.bias@rows[0:100]".to_string(), vec![100]),
                ("conv.weight@rows[100:200]".to_string(), vec![100, 8, 3, 1, 1]),
                ("conv.bias@rows[100:200]".to_string(), vec![100]),
            ]
        );
        let y = graph.outputs()[0].1;
        assert_eq!(graph.node(y).op(), Some(&Op::Concat { axis: 1 }));
        assert_eq!(graph.node(y).ty.shape.dims(), &[1, 200, 4, 6, 6]);
    }

    #[test]
    fn slices_never_go_below_the_gemm_blocking_bound() {
        // 200 channels allow 3 slices of ≥ 65; a tiny limit gets those 3 (67, 66, 67 rows).
        let graph = split(conv_graph(200), 1);
        let rows: Vec<usize> = weights(&graph).iter().step_by(2).map(|(_, d)| d[0]).collect();
        assert_eq!(rows, vec![66, 67, 67]);
        assert!(rows.iter().all(|&r| r >= MIN_SPLIT_ROWS));
        // 129 channels cannot be cut in two slices of ≥ 65; the graph is left alone.
        assert_eq!(split(conv_graph(129), 1), conv_graph(129));
        // A weight set within the limit is left alone.
        assert_eq!(split(conv_graph(200), 10_432), conv_graph(200));
    }
}
