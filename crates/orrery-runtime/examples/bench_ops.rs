//! Times single-op plans on the CPU backend, for BENCHMARKS.md.
//!
//! `cargo run --release -p orrery-runtime --example bench_ops -- <case> [--threads N] [--runs R]
//! [--warmup S] [--no-arena]` prints one JSON line: the case, median and all run times (first,
//! warm-up run excluded, and with `--warmup` those of the first S seconds too) and the
//! achieved GFLOP/s (and GB/s of operands read), the plan's arena and peak, and the bytes of outputs written into the arena or into recycled buffers in the last run
//! (`--no-arena`: outputs allocated, recycled within a run, instead of written in the arena).
//! Cases: `gemm<N>` (N³ f32) and `gemm<M>x<K>x<N>`, `linear<M>x<K>x<N>` (x against an `[N, K]` weight), `gemv<M>` (M rows
//! through a 4096 × 4096 linear: memory-bound; `gemv<M>_bf16` against a bf16 weight, as
//! checkpoints store it),
//! `attn<L>` (16 heads × 64, self-attention of length L), `attn<H>x<D>_<L>`, `xattn<Lq>_<Lk>`
//! (16 × 64 cross-attention), `conv` (3×3, 256→256 channels at 64×64),
//! `conv133_<C>_<T>x<H>x<W>` / `conv311_<C>_<T>x<H>x<W>` (the tokenizer's factorised 3-D
//! convolutions), `copy<MiB>` (the copy bandwidth, read + write), `dit` / `dit_unfused` (one Cosmos DiT
//! block, hidden 1024, 2048 tokens, text 512, compiled with and without the rewrite passes), `t5`
//! / `t5_unfused` (a T5 encoder: d_model 1024, 8 heads × 128, d_ff 4096, 4 layers, 512 tokens),
//! `cosmos` / `cosmos_unfused` (a 4-layer Cosmos DiT, hidden 1024, 2048 tokens, text 512),
//! `cosmos_medium` (the medium pipeline's transformer at its run size; `cosmos*` with
//! `--tp N` or `--sp N`: on N tensor- or sequence-parallel in-process ranks of `--threads`
//! threads each),
//! `vae_decode` / `vae_encode` (the CV8x8x8 tokenizer at real widths, 17 frames at 64 × 64).
//! `tools/bench/compare.sh` interleaves
//! these runs with `tools/bench/torch_ops.py` on the same shapes.

use orrery_compiler::{CompileOptions, Passes};
use orrery_cpu::CpuTensor;
use orrery_ir::{AttentionMask, ConvPadMode, ConvParams, DType, Graph, GraphBuilder, Op, UnaryOp};
use orrery_models::cosmos::{
    decoder_graph, dit_block, encoder_graph, transformer_graph_sharded, CosmosDitConfig, CosmosDitShapes,
    CosmosVaeConfig, DitBlockConfig, DitBlockInputs,
};
use orrery_models::t5::{self, FeedForward, T5EncoderConfig};
use orrery_models::WeightTypes;
use orrery_models::{ComponentConfig, Shard, ShardAxis};
use orrery_runtime::{MemoryWeights, Session, WeightResolver};
use std::collections::HashMap;
use std::sync::Arc;

fn filled(shape: &[usize], seed: u32) -> CpuTensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) - 0.5);
    CpuTensor::from_vec(shape.to_vec(), data.collect())
}

/// Input names with their shapes.
type CaseInputs = Vec<(&'static str, Vec<usize>)>;

/// The graph of one case plus its inputs.
fn case(name: &str) -> Option<(Graph, CaseInputs)> {
    let mut b = GraphBuilder::new();
    let inputs: CaseInputs;
    if let Some([m, k, n]) = name.strip_prefix("gemm").and_then(gemm_dims) {
        inputs = vec![("a", vec![m, k]), ("b", vec![k, n])];
        let a = b.input("a", DType::F32, [m, k]).ok()?;
        let w = b.input("b", DType::F32, [k, n]).ok()?;
        let y = b.matmul("mm", a, w).ok()?;
        b.output("y", y).ok()?;
    } else if let Some([m, k, n]) = name.strip_prefix("linear").and_then(gemm_dims) {
        // x [M, K] against a weight [N, K] as models store it (read transposed).
        inputs = vec![("x", vec![m, k])];
        let x = b.input("x", DType::F32, [m, k]).ok()?;
        let w = b.weight("w", DType::F32, [n, k]).ok()?;
        let y = b.linear("fc", x, w, None).ok()?;
        b.output("y", y).ok()?;
    } else if let Some(m) = name.strip_prefix("gemv").and_then(|s| s.strip_suffix("_bf16")?.parse::<usize>().ok()) {
        // The same product against a bf16 weight, as checkpoints store it (read as stored).
        inputs = vec![("x", vec![m, 4096])];
        let x = b.input("x", DType::F32, [m, 4096]).ok()?;
        let w = b.weight("w", DType::BF16, [4096, 4096]).ok()?;
        let y = b.linear("fc", x, w, None).ok()?;
        b.output("y", y).ok()?;
    } else if let Some(m) = name.strip_prefix("gemv").and_then(|s| s.parse::<usize>().ok()) {
        // A memory-bound linear: M rows against a 4096 × 4096 weight (read transposed, as
        // models store it).
        inputs = vec![("x", vec![m, 4096]), ("w", vec![4096, 4096])];
        let x = b.input("x", DType::F32, [m, 4096]).ok()?;
        let w = b.input("w", DType::F32, [4096, 4096]).ok()?;
        let y = b.linear("fc", x, w, None).ok()?;
        b.output("y", y).ok()?;
    } else if let Some((heads, dim, lq, lk)) = attention_dims(name) {
        inputs = vec![("q", vec![1, heads, lq, dim]), ("k", vec![1, heads, lk, dim]), ("v", vec![1, heads, lk, dim])];
        let q = b.input("q", DType::F32, [1, heads, lq, dim]).ok()?;
        let k = b.input("k", DType::F32, [1, heads, lk, dim]).ok()?;
        let v = b.input("v", DType::F32, [1, heads, lk, dim]).ok()?;
        let scale = 1.0 / (dim as f64).sqrt();
        let y = b.op("attn", Op::attention(scale, AttentionMask::None), &[q, k, v]).ok()?;
        b.output("y", y).ok()?;
    } else if let Some((kernel, c, [t, h, w])) = vae_conv_dims(name) {
        // A tokenizer convolution, C → C channels over [T, H, W]: (1,3,3) zero-padded in H and
        // W, or (3,1,1) padded by one frame on each side (the same work as the causal pad).
        inputs = vec![("x", vec![1, c, t, h, w]), ("w", [vec![c, c], kernel.to_vec()].concat())];
        let x = b.input("x", DType::F32, [1, c, t, h, w]).ok()?;
        let wt = b.input("w", DType::F32, [vec![c, c], kernel.to_vec()].concat()).ok()?;
        let pad: Vec<(usize, usize)> = kernel.iter().map(|&k| (k / 2, k / 2)).collect();
        let p = ConvParams {
            stride: vec![1, 1, 1],
            dilation: vec![1, 1, 1],
            padding: pad,
            pad_mode: ConvPadMode::Zeros,
            groups: 1,
            has_bias: false,
        };
        let y = b.op("conv", Op::Conv(p), &[x, wt]).ok()?;
        b.output("y", y).ok()?;
    } else if name == "conv" {
        inputs = vec![("x", vec![1, 256, 64, 64]), ("w", vec![256, 256, 3, 3])];
        let x = b.input("x", DType::F32, [1, 256, 64, 64]).ok()?;
        let w = b.input("w", DType::F32, [256, 256, 3, 3]).ok()?;
        let p = ConvParams {
            stride: vec![1, 1],
            dilation: vec![1, 1],
            padding: vec![(1, 1), (1, 1)],
            pad_mode: ConvPadMode::Zeros,
            groups: 1,
            has_bias: false,
        };
        let y = b.op("conv", Op::Conv(p), &[x, w]).ok()?;
        b.output("y", y).ok()?;
    } else if name == "dit" || name == "dit_unfused" {
        // One Cosmos DiT block: hidden 1024 (8 heads × 128), 2048 tokens, 512 text tokens.
        let (len, text_len, d) = (2048, 512, 1024);
        let cfg = DitBlockConfig {
            dim: d,
            heads: 8,
            head_dim: 128,
            mlp_hidden: 4 * d,
            text_dim: 1024,
            adaln_lora_dim: 256,
            qk_norm_eps: 1e-5,
            shard: Shard::WHOLE,
        };
        inputs = vec![
            ("x", vec![1, len, d]),
            ("emb", vec![1, d]),
            ("temb", vec![1, 3 * d]),
            ("text", vec![1, text_len, 1024]),
            ("rope_cos", vec![len, 128]),
            ("rope_sin", vec![len, 128]),
            ("pos_emb", vec![len, d]),
        ];
        let ids: Vec<_> =
            inputs.iter().map(|(n, s)| b.input(n, DType::F32, s.clone())).collect::<Result<_, _>>().ok()?;
        let inp = DitBlockInputs {
            x: ids[0],
            emb: ids[1],
            temb: ids[2],
            text: ids[3],
            text_mask: None,
            rope_cos: ids[4],
            rope_sin: ids[5],
            pos_emb: Some(ids[6]),
        };
        let y = dit_block(&mut b, &WeightTypes::Assumed(DType::F32), "blk", &cfg, &inp).ok()?;
        b.output("y", y).ok()?;
    } else if name == "cosmos" || name == "cosmos_unfused" {
        return cosmos_case(false, Shard::WHOLE);
    } else if name == "cosmos_medium" {
        return cosmos_case(true, Shard::WHOLE);
    } else if name == "vae_decode" || name == "vae_encode" {
        // The CV8x8x8 tokenizer at real widths (configs/cosmos-1.0-tokenizer-cv8x8x8): decode
        // [1, 16, 3, 8, 8] → [1, 3, 17, 64, 64], or encode that video.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/cosmos-1.0-tokenizer-cv8x8x8");
        let config = CosmosVaeConfig::from_config(&ComponentConfig::read(std::path::Path::new(dir)).ok()?).ok()?;
        let w = WeightTypes::Assumed(DType::F32);
        return if name == "vae_decode" {
            Some((decoder_graph(&config, &w, [1, 16, 3, 8, 8]).ok()?, vec![("z", vec![1, 16, 3, 8, 8])]))
        } else {
            Some((encoder_graph(&config, &w, [1, 3, 17, 64, 64]).ok()?, vec![("sample", vec![1, 3, 17, 64, 64])]))
        };
    } else if name == "t5" || name == "t5_unfused" {
        // transformers' T5EncoderModel at d_model 1024, 8 heads × 128, d_ff 4096 (ReLU), 4
        // layers, 512 tokens, batch 1.
        let config = T5EncoderConfig {
            vocab_size: 32128,
            d_model: 1024,
            d_kv: 128,
            d_ff: 4096,
            num_layers: 4,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward: FeedForward { act: UnaryOp::Relu, gated: false },
        };
        let graph = t5::encoder_graph(&config, &WeightTypes::Assumed(DType::F32), 1, 512, true).ok()?;
        return Some((graph, vec![("input_ids", vec![1, 512]), ("attention_mask", vec![1, 512])]));
    } else {
        return None;
    }
    Some((b.finish().ok()?, inputs))
}

/// `cosmos`: CosmosTransformer3DModel at hidden 1024 (8 heads × 128), 4 layers, latent
/// [1, 16, 8, 32, 32] = 2048 tokens, text [1, 512, 1024], fps 24, a zero padding mask.
/// `cosmos_medium` (`medium`): the medium pipeline's transformer (hidden 256 = 4 × 64, 4
/// layers) at its 17 × 64 × 96 run (latent [1, 16, 3, 8, 12], 72 tokens, text [1, 512, 256]).
/// Built for `shard` of a tensor-parallel group.
fn cosmos_case(medium: bool, shard: Shard) -> Option<(Graph, CaseInputs)> {
    let (heads, head_dim, text, max_size) =
        if medium { (4, 64, 256, [8, 16, 16]) } else { (8, 128, 1024, [128, 240, 240]) };
    let json = serde_json::json!({
        "_class_name": "CosmosTransformer3DModel", "in_channels": 16, "out_channels": 16,
        "num_attention_heads": heads, "attention_head_dim": head_dim, "num_layers": 4, "mlp_ratio": 4.0,
        "text_embed_dim": text, "adaln_lora_dim": 256, "max_size": max_size,
        "patch_size": [1, 2, 2], "rope_scale": [2.0, 1.0, 1.0], "concat_padding_mask": true,
        "extra_pos_embed_type": "learnable"
    });
    let config =
        ComponentConfig { path: "bench/cosmos/config.json".into(), class: "CosmosTransformer3DModel".into(), json };
    let config = CosmosDitConfig::from_config(&config).ok()?;
    let (latent, pixels) = if medium { ([1, 16, 3, 8, 12], [64, 96]) } else { ([1, 16, 8, 32, 32], [256, 256]) };
    let shapes = CosmosDitShapes {
        latent,
        text_len: 512,
        per_frame_timestep: false,
        attention_mask: false,
        fps: true,
        condition_mask: false,
        padding_mask: Some(pixels),
    };
    let graph = transformer_graph_sharded(&config, &WeightTypes::Assumed(DType::F32), &shapes, shard).ok()?;
    let inputs = vec![
        ("hidden_states", latent.to_vec()),
        ("timestep", vec![1]),
        ("encoder_hidden_states", vec![1, 512, text]),
        ("fps", vec![]),
        ("padding_mask", vec![1, 1, pixels[0], pixels[1]]),
    ];
    Some((graph, inputs))
}

/// Weights for `graph`: deterministic values scaled by 1/√fan-in.
fn case_weights(graph: &Graph) -> MemoryWeights {
    let mut weights = MemoryWeights::new();
    for (i, (_, node)) in graph.weights().enumerate() {
        let dims = node.ty.shape.dims();
        let scale = 1.0 / (*dims.last().unwrap_or(&1) as f32).sqrt();
        let t = filled(dims, 1000 + i as u32);
        let data: Vec<f32> = t.to_f32_vec().iter().map(|v| v * scale).collect();
        let t = match node.ty.dtype {
            DType::BF16 => {
                CpuTensor::from_vec(dims.to_vec(), data.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>())
            }
            _ => CpuTensor::from_vec(dims.to_vec(), data),
        };
        weights.insert(&node.name, t);
    }
    weights
}

/// `cosmos --tp N` / `cosmos_medium --sp N`: the transformer on N tensor- or sequence-parallel ranks (threads
/// over the in-process collective), each with `threads` threads; every run starts all ranks
/// at once and times rank 0's forward.
fn model_parallel(name: &str, ranks: usize, axis: ShardAxis, threads: usize, runs: usize) {
    use orrery_parallel::Collective;
    let sessions: Vec<Session> = (0..ranks)
        .map(|rank| {
            let (graph, _) =
                cosmos_case(name == "cosmos_medium", Shard::heads(rank, ranks)).expect("a divisible layout");
            let weights = Arc::new(case_weights(&graph));
            let plan = orrery_compiler::compile(graph).expect("valid case graph");
            Session::new(plan, weights, threads).expect("thread pool")
        })
        .collect();
    let (_, inputs) = cosmos_case(name == "cosmos_medium", Shard::WHOLE).expect("case");
    let feed = feed(&inputs);
    let comms = orrery_parallel::InProcessGroup::ranks(ranks);
    let times: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = sessions
            .iter()
            .zip(comms)
            .map(|(session, mut comm)| {
                let feed = &feed;
                s.spawn(move || {
                    let mut per_kernel = vec![0.0; session.plan().kernels.len()];
                    let times = (0..=runs)
                        .map(|i| {
                            let stats = session.run_parallel(feed.clone(), &mut comm).expect("case runs").1;
                            if i > 0 {
                                per_kernel
                                    .iter_mut()
                                    .zip(&stats.kernel_seconds)
                                    .for_each(|(a, b)| *a += b / runs as f64);
                            }
                            stats.seconds
                        })
                        .collect::<Vec<f64>>();
                    // ORRERY_PROFILE=1: rank 0's mean time per kernel group (op), slowest first.
                    if comm.rank() == 0 && std::env::var_os("ORRERY_PROFILE").is_some() {
                        let mut by_op: HashMap<String, f64> = HashMap::new();
                        for (k, t) in session.plan().kernels.iter().zip(&per_kernel) {
                            *by_op.entry(k.op.split('{').next().unwrap_or("").to_string()).or_default() += t;
                        }
                        let mut rows: Vec<_> = by_op.into_iter().collect();
                        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
                        for (op, t) in rows {
                            eprintln!("{:>9.3} ms  {op}", t * 1e3);
                        }
                    }
                    times
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank")).collect()
    });
    let times = times[0][1..].to_vec();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{{\"impl\": \"orrery\", \"case\": \"{name}\", \"ranks\": {ranks}, \"split\": \"{axis:?}\", \"threads_per_rank\": {threads}, \"median_s\": {median:.6}, \"runs_s\": {times:?}}}"
    );
}

/// `N` (N³) or `MxKxN`.
fn gemm_dims(s: &str) -> Option<[usize; 3]> {
    let d: Vec<usize> = s.split('x').map(|v| v.parse().ok()).collect::<Option<_>>()?;
    match d[..] {
        [n] => Some([n, n, n]),
        [m, k, n] => Some([m, k, n]),
        _ => None,
    }
}

/// `attn<L>` (16 heads × 64), `attn<H>x<D>_<L>`, or `xattn<Lq>_<Lk>` (16 × 64, cross):
/// (heads, head dim, query length, key length).
fn attention_dims(name: &str) -> Option<(usize, usize, usize, usize)> {
    if let Some(rest) = name.strip_prefix("xattn") {
        let (lq, lk) = rest.split_once('_')?;
        return Some((16, 64, lq.parse().ok()?, lk.parse().ok()?));
    }
    let rest = name.strip_prefix("attn")?;
    match rest.split_once('_') {
        None => rest.parse().ok().map(|l| (16, 64, l, l)),
        Some((hd, l)) => {
            let (h, d) = hd.split_once('x')?;
            let l = l.parse().ok()?;
            Some((h.parse().ok()?, d.parse().ok()?, l, l))
        }
    }
}

/// `conv133_<C>_<T>x<H>x<W>` or `conv311_<C>_<T>x<H>x<W>`: the kernel, channels and extent.
fn vae_conv_dims(name: &str) -> Option<([usize; 3], usize, [usize; 3])> {
    let (kernel, rest) = if let Some(r) = name.strip_prefix("conv133_") {
        ([1, 3, 3], r)
    } else {
        ([3, 1, 1], name.strip_prefix("conv311_")?)
    };
    let (c, extent) = rest.split_once('_')?;
    let d: Vec<usize> = extent.split('x').map(|v| v.parse().ok()).collect::<Option<_>>()?;
    Some((kernel, c.parse().ok()?, d.try_into().ok()?))
}

/// Deterministic inputs: floats from `filled`, T5 token ids in range and an all-ones mask.
fn feed(inputs: &CaseInputs) -> HashMap<String, CpuTensor> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, (n, s))| {
            let t = match *n {
                "input_ids" => CpuTensor::from_vec(
                    s.clone(),
                    (0..s.iter().product::<usize>() as i64).map(|v| v * 37 % 32128).collect(),
                ),
                "attention_mask" => CpuTensor::from_vec(s.clone(), vec![1i64; s.iter().product()]),
                "fps" => CpuTensor::from_vec(vec![], vec![24f32]),
                "padding_mask" => CpuTensor::from_vec(s.clone(), vec![0f32; s.iter().product()]),
                _ => filled(s, i as u32),
            };
            (n.to_string(), t)
        })
        .collect()
}

/// `copy<MiB>`: the machine's copy bandwidth, the yardstick of memory-bound cases: one buffer of
/// MiB MiB copied into another by `threads` workers in 1 MiB pieces; GB/s counts bytes read
/// plus bytes written.
fn copy_bandwidth(mib: usize, threads: usize, runs: usize) {
    use rayon::prelude::*;
    let n = mib << 18;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let mut times = Vec::new();
    for i in 0..=runs {
        let start = std::time::Instant::now();
        pool.install(|| {
            dst.par_chunks_mut(1 << 18).zip(src.par_chunks(1 << 18)).for_each(|(d, s)| d.copy_from_slice(s))
        });
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&dst);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{{\"impl\": \"orrery\", \"case\": \"copy{mib}\", \"threads\": {threads}, \"median_s\": {median:.6}, \"gbs\": {:.1}, \"runs_s\": {times:?}}}",
        2.0 * (n * 4) as f64 / median / 1e9
    );
}

fn flag_set(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| a == flag)
}

/// `--ab`: the case compiled with and without the rewrite passes, run alternately in one
/// process (fused, unfused, fused, …) so that the machine's drift hits both alike. Prints
/// both medians and the median of the per-pair ratios unfused / fused (> 1: fused faster).
fn ab(graph: Graph, weights: Arc<MemoryWeights>, inputs: &CaseInputs, threads: usize, runs: usize, name: &str) {
    let session = |passes| {
        let options = CompileOptions { passes, ..CompileOptions::default() };
        let plan = orrery_compiler::compile_with(graph.clone(), &options).expect("valid case graph");
        Session::new(plan, weights.clone(), threads).expect("thread pool")
    };
    let (fused, unfused) = (session(Passes::Fuse), session(Passes::None));
    let feed = feed(inputs);
    let (mut tf, mut tu, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=runs {
        let f = fused.run(&feed).expect("case runs").1.seconds;
        let u = unfused.run(&feed).expect("case runs").1.seconds;
        if i > 0 {
            tf.push(f);
            tu.push(u);
            ratios.push(u / f);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mf, mu, mr) = (median(&mut tf.clone()), median(&mut tu.clone()), median(&mut ratios.clone()));
    println!(
        "{{\"case\": \"{name}\", \"threads\": {threads}, \"fused_median_s\": {mf:.6}, \"unfused_median_s\": {mu:.6}, \"median_ratio_unfused_over_fused\": {mr:.3}, \"fused_runs_s\": {tf:?}, \"unfused_runs_s\": {tu:?}}}"
    );
}

fn main() {
    // As `orrery` sets the allocator up.
    orrery_runtime::configure_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().cloned().unwrap_or_else(|| "gemm1024".into());
    let flag = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    let threads: usize = flag("--threads").unwrap_or(2);
    let runs: usize = flag("--runs").unwrap_or(5);
    if let Some(mib) = name.strip_prefix("copy").and_then(|s| s.parse::<usize>().ok()) {
        return copy_bandwidth(mib, threads, runs);
    }
    let (tp, sp): (usize, usize) = (flag("--tp").unwrap_or(1), flag("--sp").unwrap_or(1));
    if tp > 1 {
        return model_parallel(&name, tp, ShardAxis::Heads, threads, runs);
    }
    if sp > 1 {
        return model_parallel(&name, sp, ShardAxis::Tokens, threads, runs);
    }
    let Some((graph, inputs)) = case(&name) else {
        eprintln!(
            "unknown case `{name}`: use gemm<N>, gemm<M>x<K>x<N>, gemv<M>, attn<L>, attn<H>x<D>_<L>, xattn<Lq>_<Lk>, \
             conv, conv133_<C>_<T>x<H>x<W>, conv311_<C>_<T>x<H>x<W>, dit, cosmos, cosmos_medium, t5, vae_decode or vae_encode"
        );
        std::process::exit(2);
    };
    // Weights (the DiT cases have some).
    let weights = case_weights(&graph);
    let passes = if name.ends_with("_unfused") { Passes::None } else { Passes::Fuse };
    let options = CompileOptions { passes, ..CompileOptions::default() };
    let weights = Arc::new(weights);
    if flag_set(&args, "--ab") {
        return ab(graph, weights, &inputs, threads, runs, &name);
    }
    let plan = orrery_compiler::compile_with(graph, &options).expect("valid case graph");
    let flops = plan.flops as f64;
    // Bytes every run must read at least: the inputs (for gemv, the weight dominates).
    let read_bytes: u64 = plan.graph.inputs().map(|(_, n)| n.ty.size_bytes()).sum();
    let (n_kernels, arena, resident) =
        (plan.kernels.iter().filter(|k| !k.is_view).count(), plan.arena_bytes, plan.peak_resident_bytes);
    let mut session = Session::new(plan, weights.clone(), threads).expect("thread pool");
    // --no-arena: outputs allocated (recycled within a run) instead of written in the arena.
    session.set_arena(!flag_set(&args, "--no-arena"));
    let feed = feed(&inputs);

    let mut times = Vec::new();
    let mut per_kernel: Vec<f64> = Vec::new();
    let (mut recycled_bytes, mut arena_output_bytes) = (0, 0);
    // --warmup S: run the case, untimed, for S seconds first (past the process's start-up
    // transient; see BENCHMARKS.md, "a warm-up for the short cases").
    let warmup_s: f64 =
        args.iter().position(|a| a == "--warmup").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(0.0);
    let warmup = std::time::Instant::now();
    while warmup.elapsed().as_secs_f64() < warmup_s {
        session.run(&feed).expect("case runs");
    }
    for i in 0..=runs {
        let (_, stats) = session.run(&feed).expect("case runs");
        (recycled_bytes, arena_output_bytes) = (stats.recycled_bytes, stats.arena_output_bytes);
        if i > 0 {
            times.push(stats.seconds);
            per_kernel.resize(stats.kernel_seconds.len(), 0.0);
            per_kernel.iter_mut().zip(&stats.kernel_seconds).for_each(|(a, b)| *a += b / runs as f64);
        }
    }
    // ORRERY_PROFILE=1: mean time per kernel on stderr, slowest first.
    if std::env::var_os("ORRERY_PROFILE").is_some() {
        let plan = session.plan();
        let mut rows: Vec<(f64, &orrery_compiler::Kernel)> = per_kernel.iter().copied().zip(&plan.kernels).collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (t, k) in rows {
            let (shape, gflops) = (format!("{:?}", k.output.shape.dims()), k.cost.flops as f64 / t / 1e9);
            let op = k.op.chars().take(70).collect::<String>();
            eprintln!("{:>9.3} ms {gflops:>6.1} GF/s  {shape:<22} {:<40} {op}", t * 1e3, k.name);
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{{\"impl\": \"orrery\", \"case\": \"{name}\", \"threads\": {threads}, \"median_s\": {median:.6}, \"gflops\": {:.1}, \"gbs\": {:.1}, \"kernels\": {n_kernels}, \"arena_bytes\": {arena}, \"peak_resident_bytes\": {resident}, \"recycled_bytes\": {recycled_bytes}, \"arena_output_bytes\": {arena_output_bytes}, \"peak_rss_bytes\": {}, \"packed_weight_bytes\": {}, \"kept_derived_bytes\": {}, \"runs_s\": {times:?}}}",
        flops / median / 1e9,
        read_bytes as f64 / median / 1e9,
        orrery_runtime::peak_rss_bytes().unwrap_or(0),
        weights.packed_bytes(),
        session.kept_derived_bytes()
    );
}
