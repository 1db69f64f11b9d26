/* AMX bf16 peak microbenchmark (BENCHMARKS.md "f32 products on AMX tiles"): one thread, four
 * independent 16 x 16 f32 accumulator tiles, tdpbf16ps from registers, then with the operand
 * tiles reloaded from L1 before every four products. Linux only (asks for the tile state).
 *   gcc -O2 -mamx-tile -mamx-bf16 tools/bench/amx_peak.c -o /tmp/amx_peak && /tmp/amx_peak
 * Run two at once to see whether both cores reach it.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

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

int main(void) {
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
    fprintf(stderr, "the kernel refused the AMX tile state\n");
    return 1;
  }
  struct tile_config config;
  memset(&config, 0, sizeof config);
  config.palette = 1;
  for (int i = 0; i < 8; i++) config.rows[i] = 16, config.bytes_per_row[i] = 64;
  _tile_loadconfig(&config);
  static uint16_t operands[4 * 512] __attribute__((aligned(64)));
  for (int i = 0; i < 4 * 512; i++) operands[i] = 0x3f80; /* 1.0 */
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, operands, 64); _tile_loadd(5, operands + 512, 64);
  _tile_loadd(6, operands + 1024, 64); _tile_loadd(7, operands + 1536, 64);
  const double flops_per_product = 16.0 * 16 * 32 * 2;
  long n = 20000000;
  double t = now();
  for (long i = 0; i < n; i++) {
    _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
  }
  t = now() - t;
  printf("{\"registers_gflops\": %.1f, ", n * 4 * flops_per_product / t / 1e9);
  n = 5000000;
  t = now();
  for (long i = 0; i < n; i++) {
    _tile_loadd(4, operands, 64); _tile_loadd(6, operands + 1024, 64);
    _tile_loadd(5, operands + 512, 64); _tile_loadd(7, operands + 1536, 64);
    _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
  }
  t = now() - t;
  printf("\"l1_gflops\": %.1f}\n", n * 4 * flops_per_product / t / 1e9);
  _tile_release();
  return 0;
}
