/* The serving engine's batched step, compiled: decode attention and the element-wise passes between
 * its matmuls (RMSNorm, with the residual add before it; RoPE; SwiGLU's gate). Each runs over every
 * token of the step in one call, where PyTorch took several operations (and as many passes over the
 * tensor, and for attention one call per sequence).
 *
 * Every token and every query is computed alone, by the same code whatever shares the call, so a row's
 * result is bit for bit the same whatever its companions. Sums run in 16 lanes (GCC's vector
 * extension) added up in a fixed tree; the build has no -ffast-math, so no sum is reordered.
 *
 * Tensors are bf16 (`bf16` set) or float32, rows of `stride` elements. Arithmetic is in float32; a
 * result is rounded to bf16 where PyTorch's bf16 operations round theirs.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define MAX_HEAD_DIM 256
#define MAX_GROUP 16 /* query heads per kv head */

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40); /* a quiet NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u); /* round to nearest even, as PyTorch does */
    return (uint16_t)(bits >> 16);
}

/* n values at `src` (bf16 or float32) as floats. */
static inline void load(const void *src, int bf16, int64_t n, float *dst) {
    if (bf16) {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_float(s[i]);
    } else {
        memcpy(dst, src, n * sizeof(float));
    }
}

static inline void store(const float *src, int bf16, int64_t n, void *dst) {
    if (bf16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = float_to_bf16(src[i]);
    } else {
        memcpy(dst, src, n * sizeof(float));
    }
}

static inline const char *at(const void *base, int64_t index, int bf16) {
    return (const char *)base + index * (bf16 ? 2 : 4);
}

static inline char *at_mut(void *base, int64_t index, int bf16) { return (char *)base + index * (bf16 ? 2 : 4); }

/* A float as the tensor's dtype would hold it. */
static inline float rounded(float f, int bf16) { return bf16 ? bf16_to_float(float_to_bf16(f)) : f; }

/* e^x for x <= 0 (Cephes' expf polynomial on x - n·ln2, times 2^n); below -87 it is e^-87. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = rintf(x * 1.44269504088896341f);
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

typedef float v16 __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t i16 __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline v16 lanes_at(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Where `mask` (-1 or 0 per lane) is set, `a`'s lane, else `b`'s. */
static inline v16 chosen(i16 mask, v16 a, v16 b) { return (v16)(((i16)a & mask) | ((i16)b & ~mask)); }

/* exp_nonpositive on 16 lanes at once: the same polynomial, rounding n by adding and taking away 1.5·2^23. */
static inline v16 exp_lanes(v16 x) {
    const v16 zero = {0}, low = zero - 87.0f, shift = zero + 12582912.0f;
    x = chosen(x < low, low, x);
    v16 n = (x * 1.44269504088896341f + shift) - shift;
    v16 r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    v16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
    return p * (v16)bits;
}

/* --- attention ---------------------------------------------------------------------------------------
 * Every row's new keys and values go into its own KV cache; then each of its queries attends to its
 * cache up to its own position. A row is five int64s: its cache's address ([layers, 2, kv_heads,
 * capacity, head_dim]), the cache's capacity, the positions already in it, the index of its first token
 * in q/k/v/out, and its token count. q's token i holds heads × head_dim values at q + i·q_stride (k and
 * v likewise with kv_heads, kv_stride apart); out is [tokens, heads, head_dim]. head_dim is a multiple
 * of 16, at most 256; capacity a multiple of 16.
 *
 * A head's keys are kept in blocks of 16 positions, each block transposed (`key_index`), so a query's
 * scores for 16 keys are 16-lane sums over the head's features, read straight from the cache (in bf16 by
 * the CPU's bf16 dot product, where it has one); its values as they come ([position][head_dim]), added
 * to the query's output in key order, a few queries at a time so each value is read once for them. The
 * work is split into tiles: up to TILE positions of one row and one kv head, with the query heads that
 * share it. A query's arithmetic is the same whichever tile holds it and whatever else the call holds.
 */

#define TILE 16 /* positions a tile takes */
#define QUERIES 4 /* queries whose outputs are summed together */

typedef uint16_t h16 __attribute__((vector_size(LANES * sizeof(uint16_t))));

/* 16 values at p (bf16 or float32) as floats. */
static inline v16 value_lanes(const char *p, int bf16) {
    if (!bf16) return lanes_at((const float *)p);
    h16 h;
    memcpy(&h, p, sizeof h);
    return (v16)(__builtin_convertvector(h, i16) << 16);
}

/* For each of QUERIES queries (`upto[u]` keys each, 0 for none), adds weight × value of each key it sees
 * to its `width` × 16 outputs, key by key in order. values: the block's [16][head_dim], from the first
 * of the outputs' features; weights: the queries' rows, `padded` apart; outs likewise head_dim apart. */
static inline __attribute__((always_inline)) void weigh_values(int width, int most, const int *upto, const char *values,
                                                               int bf16, int head_dim, const float *weights,
                                                               int64_t padded, float *outs) {
    v16 acc[QUERIES][4];
    int64_t size = bf16 ? 2 : 4;
    for (int u = 0; u < QUERIES; u++)
        for (int g = 0; g < width; g++) acc[u][g] = upto[u] ? lanes_at(outs + u * head_dim + g * LANES) : (v16){0};
    for (int j = 0; j < most; j++) {
        v16 v[4];
        for (int g = 0; g < width; g++) v[g] = value_lanes(values + ((int64_t)j * head_dim + g * LANES) * size, bf16);
        for (int u = 0; u < QUERIES; u++)
            if (j < upto[u]) {
                float w = weights[u * padded + j];
                for (int g = 0; g < width; g++) acc[u][g] += w * v[g];
            }
    }
    for (int u = 0; u < QUERIES; u++)
        if (upto[u])
            for (int g = 0; g < width; g++) memcpy(outs + u * head_dim + g * LANES, &acc[u][g], sizeof(v16));
}

/* Where feature d of key `position` lies in a head's blocked keys: in float32 each block is [head_dim][16];
 * in bf16 [head_dim / 2][16][2], each key's features paired, as AVX-512's bf16 dot product reads them. */
static inline int64_t key_index(int64_t position, int d, int head_dim, int bf16) {
    int64_t block = position / LANES * LANES * head_dim, p = position % LANES;
    return bf16 ? block + (d / 2) * 2 * LANES + 2 * p + d % 2 : block + d * LANES + p;
}

/* One block of 16 keys as floats, [head_dim][16]. */
static inline void load_keys(const void *src, int bf16, int head_dim, float *dst) {
    if (!bf16) {
        memcpy(dst, src, (size_t)LANES * head_dim * sizeof(float));
        return;
    }
    const uint16_t *pairs = src;
    for (int m = 0; m < head_dim / 2; m++)
        for (int p = 0; p < LANES; p++) {
            dst[2 * m * LANES + p] = bf16_to_float(pairs[(m * LANES + p) * 2]);
            dst[(2 * m + 1) * LANES + p] = bf16_to_float(pairs[(m * LANES + p) * 2 + 1]);
        }
}

#if defined(__AVX512BF16__)
#include <immintrin.h>
/* A bf16 query's scores for one block of 16 bf16 keys: the products summed a feature pair at a time by
 * `vdpbf16ps`, straight from the cache (a product of two bf16 values is exact in float32). */
static inline v16 scores_bf16(const uint16_t *keys, const uint16_t *query, int head_dim) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const uint32_t *pairs = (const uint32_t *)query;
    for (int m = 0; m < head_dim / 2; m += 4) {
#define PAIR(n, acc)                                                                                                   \
    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(keys + 2 * LANES * (m + n)),                              \
                           (__m512bh)_mm512_set1_epi32((int)pairs[m + n]));
        PAIR(0, a0) PAIR(1, a1) PAIR(2, a2) PAIR(3, a3)
#undef PAIR
    }
    return (v16)_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
}
#define DOT_BF16(bf16) (bf16) /* bf16 scores come from `scores_bf16` */
#else
#define DOT_BF16(bf16) 0
#endif

/* Positions start .. end-1 of one row, one kv head. `work` holds TILE·group·(2·head_dim + padded keys +
 * 1) + 16·head_dim floats. */
static void attend_tile(const int64_t *row, int64_t start, int64_t end, int kv_head, int layer, int heads,
                        int kv_heads, int head_dim, float scale, int bf16, const void *q, int64_t q_stride,
                        void *out, float *work) {
    int group = heads / kv_heads;
    int64_t capacity = row[1], past = row[2], first = row[3];
    int64_t queries = (end - start) * group, keys = past + end, padded = (keys + LANES - 1) / LANES * LANES;
    const void *key_base = at((const void *)(intptr_t)row[0], (((int64_t)layer * 2 * kv_heads + kv_head) * capacity) * head_dim, bf16);
    const void *value_base = at(key_base, (int64_t)kv_heads * capacity * head_dim, bf16);
    float *qs = work, *outs = qs + queries * head_dim, *scores = outs + queries * head_dim;
    float *totals = scores + queries * padded, *block = totals + queries; /* block: 16 keys */
    for (int64_t i = 0; i < queries && !DOT_BF16(bf16); i++) { /* the float32 queries the FMA scores read */
        int64_t token = first + start + i / group;
        load(at(q, token * q_stride + (kv_head * group + i % group) * head_dim, bf16), bf16, head_dim, qs + i * head_dim);
    }
    /* Scores, 16 keys at a time. Lanes past `keys` read the block's unwritten part: their scores are
     * never used. */
    for (int64_t line = 0; line < padded * head_dim * (bf16 ? 2 : 4); line += 64) { /* many reads in flight */
        __builtin_prefetch((const char *)key_base + line);
        __builtin_prefetch((const char *)value_base + line);
    }
    for (int64_t j0 = 0; j0 < keys; j0 += LANES) {
#if defined(__AVX512BF16__)
        if (DOT_BF16(bf16)) {
            for (int64_t i = 0; i < queries; i++) {
                if (j0 > past + start + i / group) continue; /* every key of the block is past this query */
                int64_t token = first + start + i / group;
                const uint16_t *query = (const uint16_t *)q + token * q_stride + (kv_head * group + i % group) * head_dim;
                v16 sum = scores_bf16((const uint16_t *)key_base + j0 * head_dim, query, head_dim) * scale;
                memcpy(scores + i * padded + j0, &sum, sizeof sum);
            }
            continue;
        }
#endif
        load_keys(at(key_base, j0 * head_dim, bf16), bf16, head_dim, block); /* [head_dim][16] */
        for (int64_t i = 0; i < queries; i++) {
            if (j0 > past + start + i / group) continue; /* every key of the block is past this query */
            const float *query = qs + i * head_dim;
            v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int d = 0; d < head_dim; d += 4) {
                a0 += query[d] * lanes_at(block + d * LANES);
                a1 += query[d + 1] * lanes_at(block + (d + 1) * LANES);
                a2 += query[d + 2] * lanes_at(block + (d + 2) * LANES);
                a3 += query[d + 3] * lanes_at(block + (d + 3) * LANES);
            }
            v16 sum = ((a0 + a1) + (a2 + a3)) * scale;
            memcpy(scores + i * padded + j0, &sum, sizeof sum);
        }
    }
    for (int64_t i = 0; i < queries; i++) {
        int64_t seen = past + start + i / group + 1; /* keys this query sees */
        float *s = scores + i * padded, top = s[0];
        int64_t whole = seen / LANES * LANES;
        if (whole) {
            v16 tops = lanes_at(s);
            for (int64_t j0 = LANES; j0 < whole; j0 += LANES) tops = chosen(lanes_at(s + j0) > tops, lanes_at(s + j0), tops);
            for (int l = 0; l < LANES; l++) top = tops[l] > top ? tops[l] : top;
        }
        for (int64_t j = whole; j < seen; j++) top = s[j] > top ? s[j] : top;
        v16 lanes = {0}, index = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
        for (int64_t j0 = 0; j0 < seen; j0 += LANES) {
            v16 e = exp_lanes(lanes_at(s + j0) - top);
            if (j0 + LANES > seen) e = chosen(index < (float)(seen - j0), e, (v16){0});
            memcpy(s + j0, &e, sizeof e);
            lanes += e;
        }
        v16 half = lanes + __builtin_shufflevector(lanes, lanes, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
        v16 quarter = half + __builtin_shufflevector(half, half, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
        v16 eighth = quarter + __builtin_shufflevector(quarter, quarter, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
        totals[i] = eighth[0] + eighth[1];
    }
    /* Outputs: each query's weighted sum of values, key by key, 16 features at a time; QUERIES queries at
     * a time, so each value is read (and converted from bf16) once for them all. */
    memset(outs, 0, queries * head_dim * sizeof(float));
    for (int64_t j0 = 0; j0 < keys; j0 += LANES) {
        const char *values = at(value_base, j0 * head_dim, bf16);
        for (int64_t i0 = 0; i0 < queries; i0 += QUERIES) {
            int upto[QUERIES], most = 0; /* keys of the block each query sees */
            for (int u = 0; u < QUERIES; u++) {
                int64_t seen = i0 + u < queries ? past + start + (i0 + u) / group + 1 : 0;
                upto[u] = seen <= j0 ? 0 : seen - j0 < LANES ? (int)(seen - j0) : LANES;
                most = upto[u] > most ? upto[u] : most;
            }
            for (int c = 0; c < head_dim; c += 4 * LANES) {
                const float *weights = scores + i0 * padded + j0;
                float *o = outs + i0 * head_dim + c;
                switch (head_dim - c < 4 * LANES ? (head_dim - c) / LANES : 4) { /* a constant width for each */
#define WIDTH(n)                                                                                                       \
    case n:                                                                                                            \
        weigh_values(n, most, upto, values + (int64_t)c * (bf16 ? 2 : 4), bf16, head_dim, weights, padded, o);         \
        break;
                    WIDTH(1) WIDTH(2) WIDTH(3) WIDTH(4)
#undef WIDTH
                }
            }
        }
    }
    for (int64_t i = 0; i < queries; i++) {
        float *o = outs + i * head_dim, inverse = 1.0f / totals[i];
        for (int d = 0; d < head_dim; d++) o[d] *= inverse;
        int64_t token = first + start + i / group;
        store(o, bf16, head_dim, at_mut(out, (token * heads + kv_head * group + i % group) * head_dim, bf16));
    }
}

typedef struct {
    int64_t row, start, end;
    int kv_head;
} Tile;

/* Writes a row's new keys and values for one kv head into its cache (a bf16 key's features a pair at a
 * time, as they lie together). */
static void store_kv(const int64_t *row, int h, int layer, int kv_heads, int head_dim, int bf16, const void *k,
                     const void *v, int64_t kv_stride) {
    int64_t size = bf16 ? 2 : 4, capacity = row[1], past = row[2], first = row[3], count = row[4];
    int step = bf16 ? 2 : 1;
    char *keys = (char *)(intptr_t)row[0] + (((int64_t)layer * 2 * kv_heads + h) * capacity * head_dim) * size;
    for (int64_t t = 0; t < count; t++) {
        char *value = keys + ((int64_t)kv_heads * capacity + past + t) * head_dim * size;
        const char *key = (const char *)k + ((first + t) * kv_stride + h * head_dim) * size;
        for (int d = 0; d < head_dim; d += step)
            memcpy(keys + key_index(past + t, d, head_dim, bf16) * size, key + d * size, step * size);
        memcpy(value, (const char *)v + ((first + t) * kv_stride + h * head_dim) * size, head_dim * size);
    }
}

/* Returns 0, or 1 where work space could not be allocated, 2 where the shapes are out of range. */
int attention(int rows, const int64_t *meta, int layer, int heads, int kv_heads, int head_dim, float scale, int bf16,
              const void *q, const void *k, const void *v, int64_t q_stride, int64_t kv_stride, void *out,
              int threads) {
    if (head_dim % LANES || head_dim > MAX_HEAD_DIM || heads % kv_heads || heads / kv_heads > MAX_GROUP) return 2;
    int64_t size = bf16 ? 2 : 4, longest = 1, tiles = 0;
    for (int r = 0; r < rows; r++)
        if (meta[5 * r + 1] % LANES) return 2;
    for (int r = 0; r < rows; r++) {
        int64_t past = meta[5 * r + 2], count = meta[5 * r + 4];
        if (past + count > longest) longest = past + count;
        tiles += (count + TILE - 1) / TILE * kv_heads;
    }
    Tile *plan = malloc((tiles ? tiles : 1) * sizeof(Tile));
    if (!plan) return 1;
    int64_t n = 0;
    for (int r = 0; r < rows; r++) {
        int64_t count = meta[5 * r + 4];
        for (int64_t start = 0; start < count; start += TILE)
            for (int h = 0; h < kv_heads; h++) {
                Tile tile = {r, start, start + TILE < count ? start + TILE : count, h};
                plan[n++] = tile;
            }
    }
    int64_t most = (int64_t)TILE * (heads / kv_heads), padded = (longest + LANES - 1) / LANES * LANES;
    size_t floats = (size_t)(most * (2 * head_dim + padded + 1) + LANES * head_dim);
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *work = malloc(floats * sizeof(float));
        if (!work) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < (int64_t)rows * kv_heads; i++)
            store_kv(meta + 5 * (i / kv_heads), (int)(i % kv_heads), layer, kv_heads, head_dim, bf16, k, v, kv_stride);
#pragma omp for schedule(dynamic)
        for (int64_t i = 0; i < tiles; i++)
            if (work)
                attend_tile(meta + 5 * plan[i].row, plan[i].start, plan[i].end, plan[i].kv_head, layer, heads, kv_heads,
                            head_dim, scale, bf16, q, q_stride, out, work);
        free(work);
    }
    free(plan);
    return failed;
}

/* --- element-wise passes ------------------------------------------------------------------------------ */

/* Rows at a time below which a pass stays on one thread (waking the others costs more than it saves). */
#define PARALLEL_ROWS 8

/* RMSNorm of each of `rows` rows of x (`dim` values, `stride` apart) into out ([rows, dim]): x·rsqrt(mean
 * x² + eps), rounded, times weight, rounded, as Llama's RMSNorm in bf16. With `delta`, x += delta first
 * (rounded, in place: the residual add before the norm). */
int rms_norm(int64_t rows, int64_t dim, void *x, int64_t stride, const void *delta, const void *weight, float eps,
             int bf16, void *out, int threads) {
    if (dim > 8192) return 2;
#pragma omp parallel for num_threads(rows >= PARALLEL_ROWS ? threads : 1) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float values[8192], w[8192];
        load(at(x, r * stride, bf16), bf16, dim, values);
        if (delta) {
            float more[8192];
            load(at(delta, r * dim, bf16), bf16, dim, more);
            for (int64_t i = 0; i < dim; i++) values[i] = rounded(values[i] + more[i], bf16);
            store(values, bf16, dim, at_mut(x, r * stride, bf16));
        }
        v16 lanes = {0};
        int64_t whole = dim / LANES * LANES;
        for (int64_t i = 0; i < whole; i += LANES) lanes += lanes_at(values + i) * lanes_at(values + i);
        float squares = 0.0f;
        for (int l = 0; l < LANES; l++) squares += lanes[l];
        for (int64_t i = whole; i < dim; i++) squares += values[i] * values[i];
        float inverse = 1.0f / sqrtf(squares / (float)dim + eps);
        load(weight, bf16, dim, w);
        for (int64_t i = 0; i < dim; i++) values[i] = rounded(w[i] * rounded(values[i] * inverse, bf16), bf16);
        store(values, bf16, dim, at_mut(out, r * dim, bf16));
    }
    return 0;
}

/* RoPE in place on the first `heads` heads of each token's row of x (head_dim values each, rows `stride`
 * apart), with that token's cos and sin ([tokens, head_dim]): Llama's rotate-half form. */
int rope(int64_t tokens, int heads, int head_dim, void *x, int64_t stride, const void *cos, const void *sin,
         int bf16, int threads) {
    if (head_dim > 1024 || head_dim % 2) return 2;
    int half = head_dim / 2;
#pragma omp parallel for num_threads(tokens >= PARALLEL_ROWS ? threads : 1) schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        float c[1024], s[1024], v[1024], o[1024];
        load(at(cos, t * head_dim, bf16), bf16, head_dim, c);
        load(at(sin, t * head_dim, bf16), bf16, head_dim, s);
        for (int h = 0; h < heads; h++) {
            char *head = at_mut(x, t * stride + (int64_t)h * head_dim, bf16);
            load(head, bf16, head_dim, v);
            for (int d = 0; d < half; d++) {
                o[d] = v[d] * c[d] - v[d + half] * s[d];
                o[d + half] = v[d + half] * c[d + half] + v[d] * s[d + half];
            }
            store(o, bf16, head_dim, head);
        }
    }
    return 0;
}

/* SwiGLU's gate: out[r, i] = silu(gate) · up, for gate_up's rows [gate (width values), up (width)]. */
int silu_mul(int64_t rows, int64_t width, const void *gate_up, int bf16, void *out, int threads) {
    if (width > 16384) return 2;
#pragma omp parallel for num_threads(rows >= PARALLEL_ROWS ? threads : 1) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float gate[16384], up[16384];
        load(at(gate_up, r * 2 * width, bf16), bf16, width, gate);
        load(at(gate_up, r * 2 * width + width, bf16), bf16, width, up);
        for (int64_t i = 0; i < width; i++) {
            float g = gate[i], e = exp_nonpositive(-fabsf(g)); /* e^-|g| */
            float sigmoid = g >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            gate[i] = rounded(rounded(g * sigmoid, bf16) * up[i], bf16);
        }
        store(gate, bf16, width, at_mut(out, r * width, bf16));
    }
    return 0;
}

/* --- a step's layers, in one call ---------------------------------------------------------------------
 * Every decoder layer of a Llama whose projections are all blocks (`blocks.c`) and bf16, in the order
 * llama.py calls the passes one by one, on the same passes: so each token's result is the same bit for
 * bit, and a step crosses from Python to C once instead of nine times a layer (each crossing allocates
 * an output, and the other threads idle between passes). `weights` holds LAYER_FIELDS int64s a layer:
 * the two norms' weights, then for q/k/v, o, gate/up and down each the blocks' q, scales, mins (0 for
 * none), bits and whether their inputs are 8-bit. x [tokens, hidden] is updated in place; `delta` gets
 * the last layer's MLP output, not yet added to x. Returns the first non-zero status of a pass. */

int block_matmul(int64_t rows, int64_t k, int64_t n, const uint16_t *x, int64_t x_stride, const uint8_t *q, int bits,
                 int int8, const uint16_t *scales, const uint16_t *mins, void *out, int64_t out_stride,
                 int out_float32, int threads); /* blocks.c */

#define LAYER_FIELDS 22

static int project(int64_t tokens, int64_t k, int64_t n, const uint16_t *x, const int64_t *w, uint16_t *out,
                   int threads) {
    return block_matmul(tokens, k, n, x, k, (const uint8_t *)(intptr_t)w[0], (int)w[3], (int)w[4],
                        (const uint16_t *)(intptr_t)w[1], (const uint16_t *)(intptr_t)w[2], out, n, 0, threads);
}

int layers(int count, const int64_t *weights, int rows, const int64_t *meta, int64_t tokens, int64_t hidden,
           int heads, int kv_heads, int head_dim, int64_t inner, float eps, float scale, uint16_t *x,
           const uint16_t *cos, const uint16_t *sin, uint16_t *delta, int threads) {
    int64_t q_width = (int64_t)heads * head_dim, kv_width = (int64_t)kv_heads * head_dim;
    int64_t qkv_width = q_width + 2 * kv_width;
    uint16_t *h = malloc(2 * tokens * hidden), *qkv = malloc(2 * tokens * qkv_width);
    uint16_t *attended = malloc(2 * tokens * q_width), *o = malloc(2 * tokens * hidden);
    uint16_t *gate_up = malloc(2 * tokens * 2 * inner), *gated = malloc(2 * tokens * inner);
    int status = h && qkv && attended && o && gate_up && gated ? 0 : 1;
    for (int l = 0; l < count && !status; l++) {
        const int64_t *w = weights + (int64_t)l * LAYER_FIELDS;
        status = rms_norm(tokens, hidden, x, hidden, l ? delta : NULL, (const void *)(intptr_t)w[0], eps, 1, h, threads);
        if (!status) status = project(tokens, hidden, qkv_width, h, w + 2, qkv, threads);
        if (!status) status = rope(tokens, heads + kv_heads, head_dim, qkv, qkv_width, cos, sin, 1, threads);
        if (!status)
            status = attention(rows, meta, l, heads, kv_heads, head_dim, scale, 1, qkv, qkv + q_width,
                               qkv + q_width + kv_width, qkv_width, qkv_width, attended, threads);
        if (!status) status = project(tokens, q_width, hidden, attended, w + 7, o, threads);
        if (!status) status = rms_norm(tokens, hidden, x, hidden, o, (const void *)(intptr_t)w[1], eps, 1, h, threads);
        if (!status) status = project(tokens, hidden, 2 * inner, h, w + 12, gate_up, threads);
        if (!status) status = silu_mul(tokens, inner, gate_up, 1, gated, threads);
        if (!status) status = project(tokens, inner, hidden, gated, w + 17, delta, threads);
    }
    free(h), free(qkv), free(attended), free(o), free(gate_up), free(gated);
    return status;
}
