/* Matmuls on block-quantized weights: `out = x @ w.T` where each run of 32 weights along a row of w is
 * `d * q + m` (4-bit q in 0..15, as GGUF's Q4_1) or `d * q` (8-bit q in -127..127, as Q8_0), with d
 * and m in float16. The shipped model's weights are exactly such values, so computing on the blocks
 * reads a quarter (or half) of the bytes bf16 copies would, and loses nothing.
 *
 * Each block's integers are exact in bf16, so a block's sum `sum(x * q)` runs on AVX-512 BF16's dot
 * product (products exact, summed in float32), and `out += d * sum(x * q) + m * sum(x)` in float32.
 * The weights are packed (`blocks.py`) in panels of 32 output columns, two k values per 32-bit lane, as
 * `vdpbf16ps` reads them; each thread unpacks one panel's integers into bf16 once and runs every row
 * over it. Every (row, column) is summed in the same order by the same instructions whichever rows
 * share the call, so a row's result is bit for bit the same whatever its companions.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>

#define PANEL 32 /* output columns per panel: two vectors of 16 float32 lanes */
#define BLOCK 32 /* weights per quantization block along k */
#define TILE 4   /* rows computed together over one panel */

/* The panel's integers for k pairs [0, k/2), as bf16 `[k/2][2 vectors][32]`. */
static void unpack(const uint8_t *q, int bits, int64_t pairs, __m512i *panel) {
    if (bits == 4) {
        /* byte i of a pair's 32: low nibble for vector 0's word i, high nibble for vector 1's */
        __m512i table = _mm512_set_epi16(0x4170, 0x4160, 0x4150, 0x4140, 0x4130, 0x4120, 0x4110, 0x4100, 0x40e0,
                                         0x40c0, 0x40a0, 0x4080, 0x4040, 0x4000, 0x3f80, 0x0000, 0x4170, 0x4160,
                                         0x4150, 0x4140, 0x4130, 0x4120, 0x4110, 0x4100, 0x40e0, 0x40c0, 0x40a0,
                                         0x4080, 0x4040, 0x4000, 0x3f80, 0x0000); /* bf16(i % 16) */
        for (int64_t j = 0; j < pairs; j++) {
            __m512i words = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + 32 * j)));
            panel[2 * j] = _mm512_permutexvar_epi16(words, table); /* uses the index's low 5 bits */
            panel[2 * j + 1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(words, 4), table);
        }
        return;
    }
    for (int64_t j = 0; j < 2 * pairs; j++) { /* 32 signed bytes per vector, in word order */
        __m128i lo = _mm_loadu_si128((const __m128i *)(q + 32 * j));
        __m128i hi = _mm_loadu_si128((const __m128i *)(q + 32 * j + 16));
        __m512 flo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
        __m512 fhi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
        panel[j] = (__m512i)_mm512_cvtne2ps_pbh(fhi, flo);
    }
}

static inline __attribute__((always_inline)) void tile(int rows, const uint16_t *x, int64_t x_stride,
                                                       const __m512i *panel, const uint16_t *scales,
                                                       const uint16_t *mins, const float *sums, int64_t blocks,
                                                       uint16_t *out, int64_t out_stride) {
    __m512 total[TILE][2];
    for (int r = 0; r < rows; r++) total[r][0] = total[r][1] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m512 acc[TILE][2];
        for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int64_t j = b * BLOCK / 2; j < (b + 1) * BLOCK / 2; j++) {
            __m512bh w0 = (__m512bh)panel[2 * j], w1 = (__m512bh)panel[2 * j + 1];
            for (int r = 0; r < rows; r++) {
                int32_t pair;
                memcpy(&pair, x + r * x_stride + 2 * j, sizeof pair);
                __m512bh xs = (__m512bh)_mm512_set1_epi32(pair);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xs, w0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xs, w1);
            }
        }
        __m512 d0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + b * PANEL)));
        __m512 d1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + b * PANEL + 16)));
        for (int r = 0; r < rows; r++) {
            total[r][0] = _mm512_fmadd_ps(acc[r][0], d0, total[r][0]);
            total[r][1] = _mm512_fmadd_ps(acc[r][1], d1, total[r][1]);
        }
        if (mins) {
            __m512 m0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mins + b * PANEL)));
            __m512 m1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mins + b * PANEL + 16)));
            for (int r = 0; r < rows; r++) {
                __m512 s = _mm512_set1_ps(sums[r * blocks + b]);
                total[r][0] = _mm512_fmadd_ps(m0, s, total[r][0]);
                total[r][1] = _mm512_fmadd_ps(m1, s, total[r][1]);
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        _mm256_storeu_si256((__m256i *)(out + r * out_stride), (__m256i)_mm512_cvtneps_pbh(total[r][0]));
        _mm256_storeu_si256((__m256i *)(out + r * out_stride + 16), (__m256i)_mm512_cvtneps_pbh(total[r][1]));
    }
}

/* out `[rows, n]` (row stride `out_stride`) = x `[rows, k]` (bf16, row stride `x_stride`) @ w.T, w
 * `[n, k]` packed by `blocks.py`: `q` `[n/32][k/2][32]` bytes (4 bits) or `[n/32][k/2][2][32]` (8
 * bits), `scales` and `mins` (4 bits only, else NULL) `[n/32][k/32][32]` float16. 0 on success, 1 if
 * out of memory, 2 for shapes it does not take. */
int block_matmul(int64_t rows, int64_t k, int64_t n, const uint16_t *x, int64_t x_stride, const uint8_t *q, int bits,
                 const uint16_t *scales, const uint16_t *mins, uint16_t *out, int64_t out_stride, int threads) {
    if (k % BLOCK || n % PANEL || (bits != 4 && bits != 8) || (bits == 8 && mins)) return 2;
    int64_t blocks = k / BLOCK, panels = n / PANEL, pairs = k / 2;
    float *sums = NULL;
    if (mins) { /* each row's sum of x over each block, for the blocks' `m` */
        sums = malloc(sizeof(float) * (rows * blocks > 0 ? rows * blocks : 1));
        if (!sums) return 1;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < blocks; b++) {
                float s = 0.0f;
                for (int64_t i = b * BLOCK; i < (b + 1) * BLOCK; i++) {
                    uint32_t bits32 = (uint32_t)x[r * x_stride + i] << 16;
                    float f;
                    memcpy(&f, &bits32, sizeof f);
                    s += f;
                }
                sums[r * blocks + b] = s;
            }
    }
    int64_t bytes_per_panel = bits == 4 ? 32 * pairs : 64 * pairs;
    int failed = 0;
    if (panels < threads) threads = panels > 0 ? (int)panels : 1;
#pragma omp parallel num_threads(threads)
    {
        __m512i *panel = aligned_alloc(64, sizeof(__m512i) * 2 * (pairs > 0 ? pairs : 1));
        if (!panel) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; p++) {
            if (!panel) continue;
            unpack(q + p * bytes_per_panel, bits, pairs, panel);
            const uint16_t *s = scales + p * blocks * PANEL, *m = mins ? mins + p * blocks * PANEL : NULL;
            int64_t r = 0;
            for (; r + TILE <= rows; r += TILE)
                tile(TILE, x + r * x_stride, x_stride, panel, s, m, sums ? sums + r * blocks : NULL, blocks,
                     out + r * out_stride + p * PANEL, out_stride);
            switch (rows - r) {
            case 3:
                tile(3, x + r * x_stride, x_stride, panel, s, m, sums ? sums + r * blocks : NULL, blocks,
                     out + r * out_stride + p * PANEL, out_stride);
                break;
            case 2:
                tile(2, x + r * x_stride, x_stride, panel, s, m, sums ? sums + r * blocks : NULL, blocks,
                     out + r * out_stride + p * PANEL, out_stride);
                break;
            case 1:
                tile(1, x + r * x_stride, x_stride, panel, s, m, sums ? sums + r * blocks : NULL, blocks,
                     out + r * out_stride + p * PANEL, out_stride);
                break;
            }
        }
        free(panel);
    }
    free(sums);
    return failed;
}

int block_matmul_available(void) { return 1; }
#else
int block_matmul(int64_t rows, int64_t k, int64_t n, const uint16_t *x, int64_t x_stride, const uint8_t *q, int bits,
                 const uint16_t *scales, const uint16_t *mins, uint16_t *out, int64_t out_stride, int threads) {
    return 2;
}

int block_matmul_available(void) { return 0; } /* the CPU has no AVX-512 BF16: weights stay bf16 or float32 */
#endif
