//! The own GEMM against a float64 product on random shapes and layouts, and the determinism
//! its callers rely on (threads, and slices of C computed alone, give the same bits).

use super::*;
use proptest::prelude::*;

/// A matrix of `rows × cols` random values in [-1, 1) stored in one of three layouts:
/// row-major, column-major, or every value two floats apart with padded rows (no unit stride).
struct Operand {
    data: Vec<f32>,
    rs: usize,
    cs: usize,
}

impl Operand {
    fn new(rows: usize, cols: usize, layout: u8, seed: u64) -> Operand {
        let (rs, cs, len) = match layout % 3 {
            0 => (cols, 1, rows * cols),
            1 => (1, rows, rows * cols),
            _ => (2 * cols + 3, 2, rows * (2 * cols + 3)),
        };
        let mut state = seed | 1;
        let data = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Operand { data, rs, cs }
    }

    fn get(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    fn strided(&self) -> Strided {
        Strided { p: self.data.as_ptr(), rs: self.rs, cs: self.cs }
    }
}

/// C (dense, row-major, `n` wide, prefilled with `c0`) after `sgemm`.
#[allow(clippy::too_many_arguments)]
fn run(
    m: usize,
    n: usize,
    k: usize,
    a: &Operand,
    b: &Operand,
    scale: f32,
    c0: &[f32],
    add: bool,
    threads: Threads,
) -> Vec<f32> {
    let mut c = c0.to_vec();
    let out = Out { c: c.as_mut_ptr(), rs: n, cs: 1 };
    // SAFETY: AVX-512F is checked by the callers; the operands hold m×k and k×n values and C
    // m×n, disjoint.
    unsafe { sgemm(m, n, k, out, a.strided(), b.strided(), scale, add, threads) };
    c
}

#[allow(clippy::too_many_arguments)]
fn check(m: usize, n: usize, k: usize, la: u8, lb: u8, scale: f32, add: bool, seed: u64) {
    let a = Operand::new(m, k, la, seed);
    let b = Operand::new(k, n, lb, seed ^ 0x9e37);
    let c0: Vec<f32> = Operand::new(m, n, 0, seed ^ 0x51).data;
    let got = run(m, n, k, &a, &b, scale, &c0, add, Threads::Pool);
    // Error measured against the largest Σ|a||b| (cancellation can make an output tiny).
    let mut worst = 0f64;
    let mut magnitude = 1e-30f64;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut abs) = (0f64, 0f64);
            for p in 0..k {
                let t = a.get(i, p) as f64 * b.get(p, j) as f64;
                sum += t;
                abs += t.abs();
            }
            let want = scale as f64 * sum + if add { c0[i * n + j] as f64 } else { 0.0 };
            magnitude = magnitude.max(scale.abs() as f64 * abs + if add { 1.0 } else { 0.0 });
            worst = worst.max((got[i * n + j] as f64 - want).abs());
        }
    }
    assert!(worst / magnitude < 1e-6, "{m}×{k}×{n} layouts ({la}, {lb}): relative error {:e}", worst / magnitude);
    let single = run(m, n, k, &a, &b, scale, &c0, add, Threads::Single);
    assert!(got.iter().zip(&single).all(|(x, y)| x.to_bits() == y.to_bits()), "threads changed the bits");
}

fn avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Awkward sizes (1, odd, just past a tile or a k block), every layout pair, any scale,
    /// with and without accumulation; f32 over k ≤ 600 terms stays well within 1e-6 of Σ|a||b|.
    #[test]
    fn products_match_float64(
        m in prop_oneof![1usize..=14, 15usize..=70],
        n in prop_oneof![1usize..=70, 120usize..=200],
        k in prop_oneof![1usize..=20, 250usize..=600],
        (la, lb) in (0u8..3, 0u8..3),
        scale in prop_oneof![Just(1.0f32), -2.0f32..2.0],
        add in any::<bool>(),
        seed in any::<u64>(),
    ) {
        if avx512() {
            check(m, n, k, la, lb, scale, add, seed);
        }
    }
}

#[test]
fn blocks_of_rows_and_columns_beyond_one_packed_block() {
    if avx512() {
        // Past MB rows with A packed (no unit stride) and past NB columns of B.
        check(MB + 7, NB + 45, 300, 2, 0, 1.0, true, 7);
        check(70, NB + 45, 260, 1, 1, 0.5, false, 8);
    }
}

#[test]
fn splits_of_columns_and_of_rows_over_threads_keep_the_bits() {
    if avx512() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            // Columns: A read in place and B wide enough, with more rows than columns too.
            check(1000, 900, 270, 0, 1, 1.0, false, 11);
            // Rows: A without a unit stride and taller than B is wide.
            check(700, 130, 300, 2, 0, 1.0, true, 12);
            // Rows: B too narrow for every part to get a few panels.
            check(400, 300, 600, 0, 0, 1.0, false, 13);
        });
    }
}

/// On AMX the threads of a column split split A into tiles once, together, each its own rows,
/// and each starts on the rows it split: the bits of one thread's product, over several passes,
/// a last partial panel, A with and without unit strides, parts that do not divide the rows,
/// and two such products at once (each thread's shared buffer taken while a product runs, so
/// a product it steals meanwhile splits its own A).
#[test]
fn an_a_split_by_the_threads_together_keeps_the_bits() {
    if !avx512() {
        return;
    }
    assert!(!on_amx() || (shares_a(333, 700) && shares_a(96, 1030)), "the cases below take the shared path");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    pool.install(|| {
        // A without a unit stride, no taller than B is wide: a column split.
        check(333, 800, 700, 2, 0, 1.0, false, 41);
        // A in place, added to C.
        check(333, 800, 700, 0, 1, 0.5, true, 42);
        rayon::join(|| check(96, 1000, 1030, 1, 0, 1.0, false, 43), || check(200, 900, 600, 0, 0, -1.5, true, 44));
    });
    // Which rows a thread starts on depends on who packed what; here, deterministically, a
    // thread that packed the rows from 96 on starts there and wraps around.
    let (m, n, k) = (333, 100, 700);
    let (a, b) = (Operand::new(m, k, 0, 45), Operand::new(k, n, 0, 46));
    let want = run(m, n, k, &a, &b, 1.0, &vec![0.0; m * n], false, Threads::Single);
    let mut c = vec![0f32; m * n];
    pool.install(|| {
        let mut packed = PackedA::default();
        // SAFETY: as in `run`; A holds m × k values.
        unsafe {
            packed.pack(m, k, a.strided());
            packed.packers = vec![(rayon::current_thread_index(), 96)];
            let out = Out { c: c.as_mut_ptr(), rs: n, cs: 1 };
            sgemm_packed_a(m, n, k, out, a.strided(), &packed, b.strided(), 1.0, false, Threads::Single);
        }
    });
    assert!(c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "starting on row 96");
}

#[test]
fn an_empty_contraction_writes_zeros_or_leaves_c() {
    if avx512() {
        let (a, b) = (Operand::new(3, 0, 0, 1), Operand::new(0, 5, 0, 2));
        assert!(run(3, 5, 0, &a, &b, 1.0, &[7.0; 15], false, Threads::Pool).iter().all(|&v| v == 0.0));
        assert!(run(3, 5, 0, &a, &b, 1.0, &[7.0; 15], true, Threads::Pool).iter().all(|&v| v == 7.0));
    }
}

/// A block of C's rows or columns computed on its own equals the same block of the whole
/// product bit for bit: what the epilogue tiles and the split convolution weights rely on.
#[test]
fn slices_of_c_computed_alone_have_the_bits_of_the_whole() {
    if !avx512() {
        return;
    }
    let (m, n, k) = (97, 301, 531);
    for (la, lb) in [(0, 0), (0, 1), (2, 0), (1, 2)] {
        let a = Operand::new(m, k, la, 3);
        let b = Operand::new(k, n, lb, 4);
        let whole = run(m, n, k, &a, &b, 1.0, &vec![0.0; m * n], false, Threads::Pool);
        for (i0, rows, j0, cols) in [(0, 65, 0, n), (65, 32, 0, n), (0, m, 5, 77), (31, 1, 250, 51)] {
            let mut c = vec![0f32; rows * cols];
            let out = Out { c: c.as_mut_ptr(), rs: cols, cs: 1 };
            // SAFETY: as in `run`, on sub-blocks of the operands.
            unsafe {
                sgemm(rows, cols, k, out, a.strided().at(i0, 0), b.strided().at(0, j0), 1.0, false, Threads::Single)
            };
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        c[i * cols + j].to_bits(),
                        whole[(i0 + i) * n + j0 + j].to_bits(),
                        "({la}, {lb}) at ({}, {})",
                        i0 + i,
                        j0 + j
                    );
                }
            }
        }
    }
}

/// A strided C (column-major) gets the same bits as a dense one.
#[test]
fn a_column_major_output_gets_the_same_bits() {
    if !avx512() {
        return;
    }
    let (m, n, k) = (29, 70, 40);
    let (a, b) = (Operand::new(m, k, 0, 5), Operand::new(k, n, 0, 6));
    let dense = run(m, n, k, &a, &b, 1.5, &vec![0.0; m * n], false, Threads::Single);
    let mut c = vec![0f32; m * n];
    let out = Out { c: c.as_mut_ptr(), rs: 1, cs: m };
    // SAFETY: as in `run`.
    unsafe { sgemm(m, n, k, out, a.strided(), b.strided(), 1.5, false, Threads::Single) };
    for i in 0..m {
        for j in 0..n {
            assert_eq!(c[j * m + i].to_bits(), dense[i * n + j].to_bits());
        }
    }
}

/// B packed ahead (several passes of k, past one block of columns, a partial last panel)
/// gives the bits of the same product packing B itself.
#[test]
fn a_b_packed_ahead_gives_the_same_bits() {
    if !avx512() {
        return;
    }
    // Row-major B (lb 0) is split straight from its rows by a product, staged first when packed
    // ahead: the same panels.
    for (m, n, k, lb) in [(13, NB + 70, 600, 1), (128, 512, 64, 1), (128, 64, 512, 0), (40, 301, 700, 0), (5, 3, 7, 2)]
    {
        let (a, b) = (Operand::new(m, k, 0, 9), Operand::new(k, n, lb, 10));
        let c0 = Operand::new(m, n, 0, 11).data;
        let want = run(m, n, k, &a, &b, 0.25, &c0, true, Threads::Single);
        let mut packed = PackedB::default();
        let mut c = c0.clone();
        // SAFETY: as in `run`.
        unsafe {
            packed.pack(k, n, b.strided());
            sgemm_packed(
                m,
                n,
                0,
                Out { c: c.as_mut_ptr(), rs: n, cs: 1 },
                a.strided(),
                &packed,
                0.25,
                true,
                Threads::Single,
            );
        }
        assert!(c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}×{k}×{n}");
    }
}

/// A weight packed ahead once (several passes, packed in parallel; f32 or bf16, read as
/// `linear` stores it) serves products over any thread split and any run of columns starting
/// on a panel with the bits of the same product packing B itself.
#[test]
fn a_weight_packed_ahead_serves_threads_and_column_runs_with_the_same_bits() {
    if !avx512() {
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    for (m, n, k) in [(300, 700, 1100), (37, 2 * NR + 5, 513), (1, 70, 3)] {
        let a = Operand::new(m, k, 0, 21);
        // The weight [n, k] row-major: B = wᵀ has element (p, j) at j·k + p.
        let w = Operand::new(n, k, 0, 22);
        let w16: Vec<half::bf16> = w.data.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let wide: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let (mut packed, mut packed16) = (PackedB::default(), PackedB::default());
        // SAFETY: B's elements (p, j), p < k, j < n, lie inside the weights.
        pool.install(|| unsafe {
            packed.pack(k, n, Strided { p: w.data.as_ptr(), rs: 1, cs: k });
            packed16.pack_bf16(k, n, Bf16Rows { p: w16.as_ptr() as *const u16, rs: k });
        });
        // What a pack holds is what the budget was charged for it (less than a line over).
        for pack in [&packed, &packed16] {
            let counted = PackedB::bytes_for(k, n);
            assert!(
                pack.bytes() <= counted && counted <= pack.bytes() + 128,
                "{} held, {counted} counted",
                pack.bytes()
            );
        }
        for (pack, values) in [(&packed, &w.data), (&packed16, &wide)] {
            for (j0, cols) in [(0, n), (NR, n - NR), (2 * NR, 1)] {
                if j0 + cols > n {
                    continue;
                }
                let mut want = vec![0f32; m * cols];
                let mut got = vec![0f32; m * cols];
                let out = |c: &mut Vec<f32>| Out { c: c.as_mut_ptr(), rs: cols, cs: 1 };
                // SAFETY: as in `run`, on columns j0.. of B.
                pool.install(|| unsafe {
                    let b = Strided { p: values.as_ptr(), rs: 1, cs: k }.at(0, j0);
                    sgemm(m, cols, k, out(&mut want), a.strided(), b, 0.5, false, Threads::Single);
                    sgemm_packed(m, cols, j0, out(&mut got), a.strided(), pack, 0.5, false, Threads::Pool);
                });
                assert!(
                    got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{m}×{k}×{n}, columns {j0}.. of {cols}"
                );
            }
        }
    }
}

/// A packed ahead (several passes, row splits over threads starting on its panels, a partial
/// last panel) gives the bits of the same product packing A itself, with B strided or
/// gathered (as the convolutions' products read it).
#[test]
fn an_a_packed_ahead_gives_the_same_bits() {
    if !avx512() {
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    for (m, n, k) in [(700, 300, 1100), (37, 150, 513), (1, 5, 3)] {
        let a = Operand::new(m, k, 0, 31);
        let b = Operand::new(k, n, 1, 32);
        let mut packed = PackedA::default();
        // SAFETY: A holds m × k values.
        pool.install(|| unsafe { packed.pack(m, k, Strided { p: a.data.as_ptr(), rs: k, cs: 1 }) });
        let want = run(m, n, k, &a, &b, 1.0, &vec![0.0; m * n], false, Threads::Single);
        for threads in [Threads::Single, Threads::Pool] {
            let mut c = vec![0f32; m * n];
            // SAFETY: as in `run`.
            pool.install(|| unsafe {
                let out = Out { c: c.as_mut_ptr(), rs: n, cs: 1 };
                sgemm_packed_a(m, n, k, out, a.strided(), &packed, b.strided(), 1.0, false, threads);
            });
            assert!(c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}×{k}×{n} {threads:?}");
            // B gathered block by block from the stored values.
            let source = Columns(&b);
            let mut c = vec![0f32; m * n];
            // SAFETY: as in `run`; `source` answers every block inside k × n.
            pool.install(|| unsafe {
                let out = Out { c: c.as_mut_ptr(), rs: n, cs: 1 };
                sgemm_gathered(m, n, k, out, a.strided(), Some(&packed), &source, false, threads);
            });
            assert!(c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "gathered {m}×{k}×{n} {threads:?}");
        }
    }
}

/// B written block by block from an operand's values, as a convolution's receptive fields are.
struct Columns<'a>(&'a Operand);

impl GatheredB for Columns<'_> {
    fn panels(&self, k0: usize, count: usize, j0: usize, width: usize, panel: usize, dst: &mut [f32]) {
        for i in 0..count {
            for j in 0..width {
                dst[(j / panel) * panel * count + i * panel + j % panel] = self.0.get(k0 + i, j0 + j);
            }
        }
    }
}
