//! The communication `orrery plan` reports per parallel layout, against sums written out from
//! the tiny transformer's config: 2 layers of 2 heads × 12 (hidden 24), 12 tokens at
//! 32 × 48 × 9 (latents 4 × 2 × 4 × 6, patches 1 × 2 × 2), guidance on (2 evaluations a step).

mod common;

use common::fixture;
use orrery_pipeline::{CosmosPipeline, ParallelLayout, RunSize, SamplerKind};

#[test]
fn communication_per_step_follows_the_layouts_formulas() {
    let pipeline = CosmosPipeline::load(&fixture("cosmos_t2w_tiny")).unwrap();
    let run = RunSize {
        height: 32,
        width: 48,
        frames: 9,
        steps: 3,
        guidance: 7.0,
        sampler: SamplerKind::DiffusersEdm,
        max_text_len: 512,
    };
    let comm = |layout: &str| pipeline.step_communication(&run, layout.parse::<ParallelLayout>().unwrap());
    let (layers, tokens, hidden, branches) = (2u64, 12u64, 24u64, 2u64);
    let activation = tokens * hidden * 4;
    // Tensor parallel: 3 all-reduces per layer (two attention outputs, the MLP's down
    // projection), each 2(N − 1)/N of the activation per rank.
    let tp2 = comm("tp:2").unwrap();
    assert_eq!(tp2.collectives as u64, 3 * layers * branches);
    assert_eq!(tp2.bytes_per_rank, 3 * layers * activation * branches);
    // 2 heads do not split over 4 ranks.
    assert!(comm("tp:4").unwrap_err().to_string().contains("2 attention heads"));
    // Ulysses: q, k, v and the output of each self-attention (heads-major, 2 × 12 × 12 each)
    // all-to-all'd, (N − 1)/N² of each per rank; the output (4 × 2 × 4 × 6) gathered once.
    let sp2 = comm("sp:2").unwrap();
    let per_attention = 4 * 2 * 12 * 12 * 4 / 4;
    let output = 4 * 2 * 4 * 6 * 4;
    assert_eq!(sp2.collectives as u64, (4 * layers + 1) * branches);
    assert_eq!(sp2.bytes_per_rank, (layers * per_attention + output / 2) * branches);
    // CFG: each rank sends its branch's output once a step.
    let cfg = comm("cfg").unwrap();
    assert_eq!((cfg.ranks, cfg.collectives, cfg.bytes_per_rank), (2, 1, output));
    // CFG over two groups of 2: each group evaluates one branch a step; its leader also
    // exchanges the output with the other group's.
    let cfg_tp = comm("cfg+tp:2").unwrap();
    assert_eq!(cfg_tp.ranks, 4);
    assert_eq!(cfg_tp.collectives as u64, 3 * layers + 1);
    assert_eq!(cfg_tp.bytes_per_rank, 3 * layers * activation + output);
    let cfg_sp = comm("sp:2+cfg").unwrap();
    assert_eq!((cfg_sp.ranks, cfg_sp.collectives as u64), (4, 4 * layers + 1 + 1));
    assert_eq!(cfg_sp.bytes_per_rank, layers * per_attention + output / 2 + output);
    assert!("cfg+cfg".parse::<ParallelLayout>().is_err());
    // Without guidance there is no second branch to split off.
    let unguided = RunSize { guidance: 1.0, ..run };
    assert!(pipeline.step_communication(&unguided, ParallelLayout::Cfg).is_err());
    assert!(pipeline.step_communication(&unguided, ParallelLayout::CfgTensor(2)).is_err());
    assert!("tp:1".parse::<ParallelLayout>().is_err() && "pp:2".parse::<ParallelLayout>().is_err());
}
