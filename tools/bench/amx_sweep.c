/* The AMX kernel's sweep with its operands in cache (BENCHMARKS.md "weights packed once"): one
 * thread, 32 x 32 blocks of C in four tiles, per 32 steps of k the kernel's 18 tile loads and
 * 24 tdpbf16ps (three bf16 parts of A and B, six part products), A in RP row panels and B in
 * CP column panels of KBS steps of 32 each, every A panel against every B panel, the tiles
 * stored after each block when STORE is 1 (as the kernel ends each pass). Linux only.
 *   gcc -O2 -mamx-tile -mamx-bf16 tools/bench/amx_sweep.c -o /tmp/amx_sweep
 *   /tmp/amx_sweep RP CP KBS STORE   (e.g. 16 8 16 1: A 1.5 MiB, B 768 KiB, the kernel's pass)
 * Rates are bf16 FLOP/s and the f32 products' equivalent (six part products per f32 one).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct tile_config {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s RP CP KBS STORE\n", argv[0]);
    return 2;
  }
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
    fprintf(stderr, "the kernel refused the AMX tile state\n");
    return 1;
  }
  struct tile_config c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int i = 0; i < 8; i++) c.rows[i] = 16, c.bytes_per_row[i] = 64;
  _tile_loadconfig(&c);
  int rp = atoi(argv[1]), cp = atoi(argv[2]), kbs = atoi(argv[3]), store = atoi(argv[4]);
  long panel = (long)kbs * 3072; /* bf16 elements: 3 parts x 2 tiles x 512 per 32 steps */
  uint16_t *a = aligned_alloc(64, rp * panel * 2), *b = aligned_alloc(64, cp * panel * 2);
  for (long i = 0; i < rp * panel; i++) a[i] = 0x3f80;
  for (long i = 0; i < cp * panel; i++) b[i] = 0x3f80;
  float *acc = aligned_alloc(64, 32 * 32 * 4);
  int reps = 2e9 / ((double)rp * cp * kbs * 24 * 16384) + 1;
  double flops = 0, t = now();
  for (int rep = 0; rep < reps; rep++)
    for (int ip = 0; ip < rp; ip++)
      for (int jp = 0; jp < cp; jp++) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int kb = 0; kb < kbs; kb++) {
          uint16_t *aa = a + ip * panel + kb * 3072, *bb = b + jp * panel + kb * 3072;
          _tile_loadd(6, bb, 64); _tile_loadd(7, bb + 512, 64);
          _tile_loadd(4, aa, 64); _tile_loadd(5, aa + 512, 64);
          _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
          _tile_loadd(4, aa + 1024, 64); _tile_loadd(5, aa + 1536, 64);
          _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
          _tile_loadd(4, aa + 2048, 64); _tile_loadd(5, aa + 2560, 64);
          _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
          _tile_loadd(6, bb + 1024, 64); _tile_loadd(7, bb + 1536, 64);
          _tile_loadd(4, aa, 64); _tile_loadd(5, aa + 512, 64);
          _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
          _tile_loadd(4, aa + 1024, 64); _tile_loadd(5, aa + 1536, 64);
          _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
          _tile_loadd(6, bb + 2048, 64); _tile_loadd(7, bb + 2560, 64);
          _tile_loadd(4, aa, 64); _tile_loadd(5, aa + 512, 64);
          _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
        if (store) {
          _tile_stored(0, acc, 128); _tile_stored(1, acc + 16, 128);
          _tile_stored(2, acc + 512, 128); _tile_stored(3, acc + 528, 128);
        }
        flops += kbs * 24.0 * 16384;
      }
  t = now() - t;
  printf("{\"a_kib\": %ld, \"b_kib\": %ld, \"store\": %d, \"bf16_gflops\": %.0f, \"f32_equivalent_gflops\": %.0f}\n",
         rp * panel / 512, cp * panel / 512, store, flops / t / 1e9, flops / t / 6e9);
  _tile_release();
  return 0;
}
