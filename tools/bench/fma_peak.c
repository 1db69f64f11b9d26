/* FMA peak microbenchmark (BENCHMARKS.md "Machine"): 12 independent FMA chains per thread on
 * the widest vectors the compiler targets.
 *   gcc -O3 -march=native -fopenmp tools/bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak 2
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
static float hsum(vec v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float hsum(vec v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
#endif

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    long iters = 200000000L / LANES;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = omp_get_wtime();
        float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            vec a = SET1(0.999f), b = SET1(1e-7f);
            vec c0 = SET1(1), c1 = SET1(2), c2 = SET1(3), c3 = SET1(4), c4 = SET1(5), c5 = SET1(6);
            vec c6 = SET1(7), c7 = SET1(8), c8 = SET1(9), c9 = SET1(10), c10 = SET1(11), c11 = SET1(12);
            for (long i = 0; i < iters; i++) {
                c0 = FMA(c0, a, b); c1 = FMA(c1, a, b); c2 = FMA(c2, a, b); c3 = FMA(c3, a, b);
                c4 = FMA(c4, a, b); c5 = FMA(c5, a, b); c6 = FMA(c6, a, b); c7 = FMA(c7, a, b);
                c8 = FMA(c8, a, b); c9 = FMA(c9, a, b); c10 = FMA(c10, a, b); c11 = FMA(c11, a, b);
            }
            vec s = ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7)));
            sink += hsum(ADD(s, ADD(ADD(c8, c9), ADD(c10, c11))));
        }
        double dt = omp_get_wtime() - t0;
        double gflops = 2.0 * 12 * LANES * (double)iters * threads / dt / 1e9;
        if (gflops > best) best = gflops;
        if (sink == 42) printf(" ");
    }
    printf("{\"lanes\": %d, \"threads\": %d, \"best_gflops\": %.1f}\n", LANES, threads, best);
    return 0;
}
