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

static inline v16 lanes_at(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* q · k over head_dim features: 16 lanes, each summing its features in order, then a fixed tree. */
static inline float dot(const float *q, const float *k, int head_dim) {
    v16 lanes = {0};
    for (int c = 0; c < head_dim; c += LANES) lanes += lanes_at(q + c) * lanes_at(k + c);
    v16 half = lanes + __builtin_shufflevector(lanes, lanes, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v16 quarter = half + __builtin_shufflevector(half, half, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
    v16 eighth = quarter + __builtin_shufflevector(quarter, quarter, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
    return eighth[0] + eighth[1];
}

/* --- decode attention ---------------------------------------------------------------------------------
 * Every decoding row's new key and value go into its own KV cache, then its one query per head attends
 * to its cache: its scores key by key, its softmax over the keys, its weighted sum of values key by key.
 * A row is four int64s: its cache's address ([layers, 2, kv_heads, capacity, head_dim]), the cache's
 * capacity, the positions already in it, and the index of its token in q/k/v/out. q's token i holds
 * heads × head_dim values at q + i·q_stride (k and v likewise with kv_heads); out is [tokens, heads,
 * head_dim]. head_dim is a multiple of 16, at most 256.
 */

/* One row, one kv head: its `group` query heads attend to keys 0 .. keys-1. `scores` holds
 * group × keys floats. */
static void attend_head(const int64_t *row, int layer, int heads, int kv_heads, int head_dim, float scale,
                        int bf16, const void *q, int64_t q_stride, void *out, int kv_head, float *scores) {
    int group = heads / kv_heads;
    int64_t capacity = row[1], keys = row[2] + 1, token = row[3];
    const void *key_base = at((const void *)(intptr_t)row[0], (((int64_t)layer * 2 * kv_heads + kv_head) * capacity) * head_dim, bf16);
    const void *value_base = at(key_base, (int64_t)kv_heads * capacity * head_dim, bf16);
    float queries[MAX_GROUP][MAX_HEAD_DIM], outs[MAX_GROUP][MAX_HEAD_DIM], feature[MAX_HEAD_DIM];
    for (int g = 0; g < group; g++)
        load(at(q, token * q_stride + (kv_head * group + g) * head_dim, bf16), bf16, head_dim, queries[g]);
    for (int64_t j = 0; j < keys; j++) {
        load(at(key_base, j * head_dim, bf16), bf16, head_dim, feature);
        for (int g = 0; g < group; g++) scores[g * keys + j] = dot(queries[g], feature, head_dim) * scale;
    }
    float totals[MAX_GROUP];
    for (int g = 0; g < group; g++) {
        float *s = scores + g * keys, top = s[0];
        for (int64_t j = 1; j < keys; j++) top = s[j] > top ? s[j] : top;
        float lanes[LANES] = {0};
        int64_t whole = keys / LANES * LANES;
        for (int64_t j0 = 0; j0 < whole; j0 += LANES)
            for (int l = 0; l < LANES; l++) {
                s[j0 + l] = exp_nonpositive(s[j0 + l] - top);
                lanes[l] += s[j0 + l];
            }
        for (int64_t j = whole; j < keys; j++) {
            s[j] = exp_nonpositive(s[j] - top);
            lanes[j - whole] += s[j];
        }
        for (int width = LANES / 2; width > 0; width /= 2)
            for (int l = 0; l < width; l++) lanes[l] += lanes[l + width];
        totals[g] = lanes[0];
        memset(outs[g], 0, head_dim * sizeof(float));
    }
    for (int64_t j = 0; j < keys; j++) {
        load(at(value_base, j * head_dim, bf16), bf16, head_dim, feature);
        for (int g = 0; g < group; g++) {
            float weight = scores[g * keys + j];
            for (int d = 0; d < head_dim; d++) outs[g][d] = fmaf(weight, feature[d], outs[g][d]);
        }
    }
    for (int g = 0; g < group; g++) {
        float inverse = 1.0f / totals[g];
        for (int d = 0; d < head_dim; d++) outs[g][d] *= inverse;
        store(outs[g], bf16, head_dim, (char *)out + (token * heads + kv_head * group + g) * head_dim * (bf16 ? 2 : 4));
    }
}

/* Returns 0, or 1 where work space could not be allocated, 2 where the shapes are out of range. */
int decode_attention(int rows, const int64_t *meta, int layer, int heads, int kv_heads, int head_dim, float scale,
                     int bf16, const void *q, const void *k, const void *v, int64_t q_stride, int64_t kv_stride,
                     void *out, int threads) {
    if (head_dim % LANES || head_dim > MAX_HEAD_DIM || heads % kv_heads || heads / kv_heads > MAX_GROUP) return 2;
    int64_t longest = 1, size = bf16 ? 2 : 4;
    for (int r = 0; r < rows; r++) {
        const int64_t *row = meta + 4 * r;
        char *cache = (char *)(intptr_t)row[0];
        int64_t capacity = row[1], past = row[2], token = row[3];
        for (int h = 0; h < kv_heads; h++) {
            char *key = cache + ((((int64_t)layer * 2 * kv_heads + h) * capacity + past) * head_dim) * size;
            char *value = key + (int64_t)kv_heads * capacity * head_dim * size;
            memcpy(key, (const char *)k + (token * kv_stride + h * head_dim) * size, head_dim * size);
            memcpy(value, (const char *)v + (token * kv_stride + h * head_dim) * size, head_dim * size);
        }
        if (past + 1 > longest) longest = past + 1;
    }
    int failed = 0, items = rows * kv_heads;
#pragma omp parallel num_threads(threads)
    {
        float *scores = malloc((size_t)(heads / kv_heads) * longest * sizeof(float));
        if (!scores) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (int i = 0; i < items; i++)
            if (scores)
                attend_head(meta + 4 * (i / kv_heads), layer, heads, kv_heads, head_dim, scale, bf16, q, q_stride, out,
                            i % kv_heads, scores);
        free(scores);
    }
    return failed;
}

/* --- element-wise passes ------------------------------------------------------------------------------ */

/* Rows at a time below which a pass stays on one thread (waking the others costs more). */
#define PARALLEL_ROWS 64

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
