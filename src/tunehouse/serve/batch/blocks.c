/* Matmuls on block-quantized weights: `out = x @ w.T` where each run of 32 weights along a row of w is
 * `d * q + m` (4-bit q in 0..15, as GGUF's Q4_1) or `d * q` (8-bit q in -127..127, as Q8_0), with d
 * and m in float16. The shipped model's weights are exactly such values, so computing on the blocks
 * reads a quarter (or half) of the bytes bf16 copies would, and loses nothing of the weights.
 *
 * 4-bit blocks packed for 8-bit inputs (`int8`) multiply each row of `x` rounded to 8-bit integers and
 * a scale per run of `SUB` values, as llama.cpp multiplies the same Q4_1 weights with Q8_1 activations
 * (per 32): the integer sums run on AVX-512 VNNI's `vpdpbusd`, twice the multiply-adds of a bf16 dot
 * product, and `out += d * sum(dx * sum(xq * q)) + m * sum(dx * xq)` in float32. Other blocks
 * multiply bf16 `x` on AVX-512 BF16's dot product, where their integers are exact, and
 * `out += d * sum(x * q) + m * sum(x)`. The weights are packed (`blocks.py`) in panels of 32 output
 * columns as those instructions read them; each thread unpacks one block of a panel at a time and runs
 * every row over it. Every (row, column) is summed in the same order by the same instructions whichever
 * rows share the call, and a row is rounded to 8 bits on its own values alone, so a row's result is bit
 * for bit the same whatever its companions.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#define PANEL 32 /* output columns per panel: two vectors of 16 float32 lanes */
#define BLOCK 32 /* weights per quantization block along k */
#ifndef TILE
#define TILE 4 /* rows computed together over one block */
#endif
#define AHEAD 4  /* blocks ahead that a thread asks the memory for */
#define SUB 16 /* inputs per 8-bit scale, within a block: 16 or 32 (BENCHMARKS.md weighs them) */

/* One block's integers (16 k pairs) of a panel packed for bf16 `x`, as bf16 `[16 pairs][2 vectors][32]`. */
static inline void unpack_bf16(const uint8_t *q, int bits, __m512i *block) {
    if (bits == 4) {
        /* byte i of a pair's 32: low nibble for vector 0's word i, high nibble for vector 1's */
        const __m512i table = _mm512_set_epi16(
            0x4170, 0x4160, 0x4150, 0x4140, 0x4130, 0x4120, 0x4110, 0x4100, 0x40e0, 0x40c0, 0x40a0, 0x4080, 0x4040,
            0x4000, 0x3f80, 0x0000, 0x4170, 0x4160, 0x4150, 0x4140, 0x4130, 0x4120, 0x4110, 0x4100, 0x40e0, 0x40c0,
            0x40a0, 0x4080, 0x4040, 0x4000, 0x3f80, 0x0000); /* bf16(i % 16) */
        for (int j = 0; j < BLOCK / 2; j++) {
            __m512i words = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + 32 * j)));
            block[2 * j] = _mm512_permutexvar_epi16(words, table); /* uses the index's low 5 bits */
            block[2 * j + 1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(words, 4), table);
        }
        return;
    }
    for (int j = 0; j < BLOCK; j++) { /* 32 signed bytes per vector, in word order */
        __m128i lo = _mm_loadu_si128((const __m128i *)(q + 32 * j));
        __m128i hi = _mm_loadu_si128((const __m128i *)(q + 32 * j + 16));
        __m512 flo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
        __m512 fhi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
        block[j] = (__m512i)_mm512_cvtne2ps_pbh(fhi, flo);
    }
}

/* One 4-bit block (8 groups of 4 k) of a panel packed for 8-bit `x`, as bytes `[8 groups][2 vectors][16
 * lanes][4]`: a group's 64 bytes hold the low 16 columns' values in their low nibbles, the high 16's in
 * the high. */
static inline void unpack_int8(const uint8_t *q, __m512i *block) {
    const __m512i low = _mm512_set1_epi8(15);
    for (int g = 0; g < BLOCK / 4; g++) {
        __m512i both = _mm512_loadu_si512((const void *)(q + 64 * g));
        block[2 * g] = _mm512_and_si512(both, low);
        block[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16(both, 4), low);
    }
}

/* Rows' bf16 `x` (their values of one block) times one block of a panel, added to their totals
 * `[rows][32]` as `total += d * sum(x * q) + m * sum(x)`: the block's integers are exact in bf16, so
 * the products are exact on AVX-512 BF16's dot product and summed in float32. */
static inline __attribute__((always_inline)) void tile_bf16(int rows, const uint16_t *x, int64_t x_stride,
                                                       const __m512i *block, __m512 d[2], __m512 m[2],
                                                       const float *sums, int64_t sums_stride, float *totals) {
    __m512 acc[TILE][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int j = 0; j < BLOCK / 2; j++) {
        __m512bh w0 = (__m512bh)block[2 * j], w1 = (__m512bh)block[2 * j + 1];
        for (int r = 0; r < rows; r++) {
            int32_t pair;
            memcpy(&pair, x + r * x_stride + 2 * j, sizeof pair);
            __m512bh xs = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xs, w0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xs, w1);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < 2; c++) {
            float *t = totals + r * PANEL + 16 * c;
            __m512 total = _mm512_fmadd_ps(acc[r][c], d[c], _mm512_load_ps(t));
            if (sums) total = _mm512_fmadd_ps(m[c], _mm512_set1_ps(sums[r * sums_stride]), total);
            _mm512_store_ps(t, total);
        }
}

/* Rows' 8-bit `xq` (their values of one block, `x ≈ dx * xq` per run of `SUB`) times one 4-bit block of
 * a panel, added to their totals `[rows][32]` as `total += d * sum(dx * sum(xq * q)) + m * sum(dx * xq)`:
 * the integer sums on VNNI's `vpdpbusd`, 64 multiply-adds an instruction (twice bf16's), exact in int32. */
static inline __attribute__((always_inline)) void tile_int8(int rows, const int8_t *xq, int64_t xq_stride,
                                                           const __m512i *block, __m512 d[2], __m512 m[2],
                                                           const float *dx, int64_t dx_stride, const float *sums,
                                                           int64_t sums_stride, float *totals) {
    __m512 scaled[TILE][2]; /* sum over runs of dx * sum(xq * q) */
    for (int s = 0; s < BLOCK / SUB; s++) {
        __m512i acc[TILE][2];
        for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
        for (int g = s * SUB / 4; g < (s + 1) * SUB / 4; g++) {
            __m512i w0 = block[2 * g], w1 = block[2 * g + 1];
            for (int r = 0; r < rows; r++) {
                int32_t four;
                memcpy(&four, xq + r * xq_stride + 4 * g, sizeof four);
                __m512i xs = _mm512_set1_epi32(four);
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, xs);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w1, xs);
            }
        }
        for (int r = 0; r < rows; r++) {
            __m512 scale = _mm512_set1_ps(dx[r * dx_stride + s]);
            for (int c = 0; c < 2; c++)
                scaled[r][c] = s ? _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][c]), scale, scaled[r][c])
                                 : _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][c]), scale);
        }
    }
    for (int r = 0; r < rows; r++) {
        __m512 sum = _mm512_set1_ps(sums[r * sums_stride]);
        for (int c = 0; c < 2; c++) {
            float *t = totals + r * PANEL + 16 * c;
            _mm512_store_ps(t, _mm512_fmadd_ps(m[c], sum, _mm512_fmadd_ps(scaled[r][c], d[c], _mm512_load_ps(t))));
        }
    }
}

/* Each row's values of each run of `SUB` as `dx * xq` (`xq` 8-bit integers, `dx` = the run's largest
 * magnitude / 127, as GGUF's Q8_1 rounds activations for Q4_1 weights, in shorter runs), and per block
 * the sum of those rounded values: `m` times it cancels the bias that `q`'s offset (0..15 around
 * `-m / d`) gives each rounding error, where the exact sum would leave it. */
#define QUANTIZE_ROWS 8 /* rows below which rounding stays on one thread (waking the others costs more) */
static void quantize_rows(int64_t rows, int64_t k, const uint16_t *x, int64_t x_stride, int8_t *xq, float *dx,
                          float *sums, int threads) {
    int64_t runs = k / SUB;
#pragma omp parallel for num_threads(rows >= QUANTIZE_ROWS ? threads : 1) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < k / BLOCK; b++) {
            float sum = 0.0f;
            for (int64_t i = b * BLOCK; i < (b + 1) * BLOCK; i += SUB) {
                __m512 values[SUB / 16];
                __m512 largest = _mm512_setzero_ps();
                for (int v = 0; v < SUB / 16; v++) {
                    __m256i words = _mm256_loadu_si256((const __m256i *)(x + r * x_stride + i + 16 * v));
                    values[v] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(words), 16));
                    largest = _mm512_max_ps(largest, _mm512_abs_ps(values[v]));
                }
                float most = _mm512_reduce_max_ps(largest);
                float scale = most / 127.0f;
                __m512 inverse = _mm512_set1_ps(most > 0.0f ? 127.0f / most : 0.0f);
                __m512i total = _mm512_setzero_si512();
                for (int v = 0; v < SUB / 16; v++) {
                    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(values[v], inverse)); /* to nearest, ties even */
                    _mm_storeu_si128((__m128i *)(xq + r * k + i + 16 * v), _mm512_cvtsepi32_epi8(q));
                    total = _mm512_add_epi32(total, q);
                }
                dx[r * runs + i / SUB] = scale;
                sum += scale * (float)_mm512_reduce_add_epi32(total);
            }
            sums[r * (k / BLOCK) + b] = sum;
        }
}

/* out `[rows, n]` (row stride `out_stride`) = x `[rows, k]` (bf16, row stride `x_stride`) @ w.T, w
 * `[n, k]` packed by `blocks.py`: `q` `[n/32][k/2][32]` bytes (4 bits), `[n/32][k/4][64]` (4 bits for
 * `int8`, which rounds each row of x to 8 bits per run of `SUB`) or `[n/32][k/2][2][32]` (8 bits);
 * `scales` and `mins` (4 bits, else NULL) `[n/32][k/32][32]` float16. `out` is bf16, or float32 with
 * `out_float32` (logits, whose float32 sums need no rounding to bf16). A thread takes a panel at a time
 * and a block at a time of it, unpacking the block's integers once for every row.
 * 0 on success, 1 if out of memory, 2 for shapes it does not take. */
int block_matmul(int64_t rows, int64_t k, int64_t n, const uint16_t *x, int64_t x_stride, const uint8_t *q, int bits,
                 int int8, const uint16_t *scales, const uint16_t *mins, void *out, int64_t out_stride,
                 int out_float32, int threads) {
    if (k % BLOCK || n % PANEL || (bits != 4 && bits != 8) || (bits == 8 && mins) || (int8 && !mins)) return 2;
    if (rows == 0) return 0;
    int64_t blocks = k / BLOCK, panels = n / PANEL, block_bytes = bits * BLOCK * PANEL / 8;
    float *dx = NULL, *sums = NULL;
    int8_t *xq = NULL;
    if (mins) { /* each row's sum of x over each block, for the blocks' `m` */
        sums = malloc(sizeof(float) * rows * blocks);
        if (!sums) return 1;
    }
    if (int8) {
        dx = malloc(sizeof(float) * rows * (k / SUB));
        xq = malloc((size_t)(rows * k));
        if (!dx || !xq) {
            free(dx), free(sums), free(xq);
            return 1;
        }
        quantize_rows(rows, k, x, x_stride, xq, dx, sums, threads);
    } else if (mins) {
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
    int failed = 0;
    if (panels < threads) threads = panels > 0 ? (int)panels : 1;
#pragma omp parallel num_threads(threads)
    {
        __m512i *block = aligned_alloc(64, sizeof(__m512i) * BLOCK);
        float *totals = aligned_alloc(64, sizeof(float) * PANEL * rows);
        if (!block || !totals) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; p++) {
            if (!block || !totals) continue;
            memset(totals, 0, sizeof(float) * PANEL * rows);
            const uint8_t *qp = q + p * blocks * block_bytes;
            for (int64_t b = 0; b < blocks; b++) {
                for (int64_t line = 0; line < block_bytes; line += 64)
                    _mm_prefetch((const char *)(qp + (b + AHEAD) * block_bytes + line), _MM_HINT_T0);
                int64_t at = (p * blocks + b) * PANEL;
                __m512 d[2] = {_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + at))),
                               _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + at + 16)))};
                __m512 m[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
                if (mins) {
                    m[0] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mins + at)));
                    m[1] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mins + at + 16)));
                }
                const float *sb = sums ? sums + b : NULL;
                if (int8) {
                    unpack_int8(qp + b * block_bytes, block);
                    for (int64_t r = 0; r < rows; r += TILE) {
                        const int8_t *xr = xq + r * k + b * BLOCK;
                        const float *dr = dx + r * (k / SUB) + b * (BLOCK / SUB);
                        float *tr = totals + r * PANEL;
                        switch (rows - r < TILE ? rows - r : TILE) { /* a constant row count for each, unrolled */
#define ROWS(n)                                                                                                        \
    case n:                                                                                                            \
        tile_int8(n, xr, k, block, d, m, dr, k / SUB, sb + r * blocks, blocks, tr);                                    \
        break;
                            ROWS(1) ROWS(2) ROWS(3) ROWS(4)
#undef ROWS
                        }
                    }
                } else {
                    unpack_bf16(qp + b * block_bytes, bits, block);
                    for (int64_t r = 0; r < rows; r += TILE) {
                        const uint16_t *xr = x + r * x_stride + b * BLOCK;
                        const float *sr = sb ? sb + r * blocks : NULL;
                        float *tr = totals + r * PANEL;
                        switch (rows - r < TILE ? rows - r : TILE) {
#define ROWS(n)                                                                                                        \
    case n:                                                                                                            \
        tile_bf16(n, xr, x_stride, block, d, m, sr, blocks, tr);                                                       \
        break;
                            ROWS(1) ROWS(2) ROWS(3) ROWS(4)
#undef ROWS
                        }
                    }
                }
            }
            for (int64_t r = 0; r < rows; r++)
                for (int c = 0; c < 2; c++) {
                    __m512 total = _mm512_load_ps(totals + r * PANEL + 16 * c);
                    int64_t at = r * out_stride + p * PANEL + 16 * c;
                    if (out_float32)
                        _mm512_storeu_ps((float *)out + at, total);
                    else
                        _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), (__m256i)_mm512_cvtneps_pbh(total));
                }
        }
        free(block);
        free(totals);
    }
    free(dx), free(sums), free(xq);
    return failed;
}

int block_matmul_available(void) { return 1; }
#else
int block_matmul(int64_t rows, int64_t k, int64_t n, const uint16_t *x, int64_t x_stride, const uint8_t *q, int bits,
                 int int8, const uint16_t *scales, const uint16_t *mins, void *out, int64_t out_stride,
                 int out_float32, int threads) {
    return 2;
}

int block_matmul_available(void) { return 0; } /* no AVX-512 BF16 and VNNI: weights stay bf16 or float32 */
#endif
