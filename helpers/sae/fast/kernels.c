/* CPU kernels of the sparse training step, built on first use by helpers/sae/kernels.py
 * (gcc -O3 -march=native -fopenmp; loaded with ctypes, no torch headers). Each replaces torch
 * ops that had become the step's largest costs once the encoder GEMM ran in bf16.
 *
 * topk_rows:        the k largest entries of every row of a [B, m] fp32 or bf16 matrix
 *                   (torch.topk on CPU pays ~4 ns per value it ranks).
 * decode_sddmm:     x_hat - x and the codes' gradient <gx, W_dec[col]> in one pass per token, the
 *                   second product reading decoder rows still in cache; also sum ||e||^2, sum gx.
 * sddmm_rows:       <A[row], W[col]> on a CSR pattern with W fp32 or bf16 (sampled_addmm: fp32 only).
 * latent_order:     a stable counting sort of entries by latent.
 * gather_sorted:    the gradient sums' rows and weights put in latent order, with per-latent sums.
 * project_out_rows: g[r] -= <g[r], W[r]> W[r] (unit-norm decoder gradient) in one pass.
 * normalize_rows:   unit-norm decoder rows, and their bf16 copy for the next step, in one pass.
 *
 * Order: values are compared through a key that orders floats as numbers (-0 below +0, NaN with
 * the sign bit clear above +inf, as torch.topk ranks NaN first).
 */
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* Signed key of float bits: larger float, larger int32. */
static inline int32_t key_of_bits(uint32_t b) {
    return (int32_t)(b ^ ((uint32_t)((int32_t)b >> 31) & 0x7fffffffu));
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float w_at(const void *W, int w_elem, int64_t i) {
    return w_elem == 2 ? bf16_to_f32(((const uint16_t *)W)[i]) : ((const float *)W)[i];
}

/* <a, w> over d, a fp32, w fp32 (w_elem 4) or bf16 (2) converted exactly; fp32 accumulation. */
static inline float dot_f32(const float *a, const void *w, int w_elem, int64_t d) {
    float acc = 0.0f;
    if (w_elem == 2) {
        const uint16_t *h = (const uint16_t *)w;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < d; i++) acc += a[i] * bf16_to_f32(h[i]);
    } else {
        const float *f = (const float *)w;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < d; i++) acc += a[i] * f[i];
    }
    return acc;
}

/* Unsigned key of element j of a row (bf16 or fp32 bits). */
static inline uint32_t ukey(const void *row, int bf16, int64_t j) {
    uint32_t b = bf16 ? (uint32_t)((const uint16_t *)row)[j] << 16 : ((const uint32_t *)row)[j];
    return (uint32_t)key_of_bits(b) ^ 0x80000000u;
}

/* gmax[g] = the largest key of the entries j = g (mod G): one vectorised pass over the row. */
static void group_max(const void *row, int bf16, int64_t m, int64_t G, uint32_t *gmax) {
    for (int64_t g = 0; g < G; g++) gmax[g] = 0;
    for (int64_t base = 0; base < m; base += G) {
        int64_t len = m - base < G ? m - base : G;
        if (bf16) {
            const uint16_t *r = (const uint16_t *)row + base;
#pragma omp simd
            for (int64_t g = 0; g < len; g++) {
                uint32_t q = (uint32_t)key_of_bits((uint32_t)r[g] << 16) ^ 0x80000000u;
                gmax[g] = q > gmax[g] ? q : gmax[g];
            }
        } else {
            const uint32_t *r = (const uint32_t *)row + base;
#pragma omp simd
            for (int64_t g = 0; g < len; g++) {
                uint32_t q = (uint32_t)key_of_bits(r[g]) ^ 0x80000000u;
                gmax[g] = q > gmax[g] ? q : gmax[g];
            }
        }
    }
}

/* The largest t with its low 16 bits zero that at least k of u[0..G) reach, built bit by bit
 * from the top: the k-th largest of u with its low bits cleared (exact for bf16 keys). */
static uint32_t kth_bound(const uint32_t *u, int64_t G, int64_t k) {
    uint32_t t = 0;
    for (int bit = 31; bit >= 16; bit--) {
        uint32_t c = t | (1u << bit);
        int64_t n = 0;
#pragma omp simd reduction(+ : n)
        for (int64_t g = 0; g < G; g++) n += u[g] >= c;
        if (n >= k) t = c;
    }
    return t;
}

/* (key, index) in one int64 that orders by key, then by the lower index. */
static inline int64_t pack(uint32_t key, int64_t j) {
    return (int64_t)(((uint64_t)(key ^ 0x80000000u) << 32) | (uint32_t)~(uint32_t)j);
}

static inline int64_t unpack_index(int64_t c) {
    return (int64_t)(uint32_t)~(uint32_t)(c & 0xffffffff);
}

/* Writes every entry with key >= t to cand, packed; returns how many. */
static int64_t candidates(const void *row, int bf16, int64_t m, uint32_t t, int64_t *cand) {
    int64_t n = 0, j0 = 0;
#ifdef __AVX512F__
    const __m512i vt = _mm512_set1_epi32((int32_t)(t ^ 0x80000000u)), m31 = _mm512_set1_epi32(0x7fffffff);
    for (; j0 + 16 <= m; j0 += 16) {
        __m512i x = bf16 ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                                 (const __m256i *)((const uint16_t *)row + j0))), 16)
                         : _mm512_loadu_si512((const void *)((const uint32_t *)row + j0));
        __m512i key = _mm512_xor_si512(x, _mm512_and_si512(_mm512_srai_epi32(x, 31), m31));
        for (__mmask16 mk = _mm512_cmpge_epi32_mask(key, vt); mk; mk &= mk - 1) {
            int64_t j = j0 + __builtin_ctz(mk);
            cand[n++] = pack(ukey(row, bf16, j), j);
        }
    }
#endif
    for (; j0 < m; j0++) {
        uint32_t q = ukey(row, bf16, j0);
        if (q >= t) cand[n++] = pack(q, j0);
    }
    return n;
}

/* Reorder c[0..len) so that its n largest come first (quickselect, Hoare partition). */
static void top_first(int64_t *c, int64_t len, int64_t n) {
    int64_t lo = 0, hi = len - 1, target = n - 1;
    while (lo < hi) {
        int64_t x = c[lo], y = c[(lo + hi) / 2], z = c[hi];
        int64_t p = x > y ? (y > z ? y : (x > z ? z : x)) : (x > z ? x : (y > z ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (c[i] > p) i++;
            while (c[j] < p) j--;
            if (i <= j) { int64_t t = c[i]; c[i] = c[j]; c[j] = t; i++; j--; }
        }
        if (target <= j) hi = j; else if (target >= i) lo = i; else return;
    }
}

static void sort_desc(int64_t *c, int64_t n) {
    for (int64_t i = 1; i < n; i++) {
        int64_t v = c[i], j = i - 1;
        while (j >= 0 && c[j] < v) { c[j + 1] = c[j]; j--; }
        c[j + 1] = v;
    }
}

/* pre [B, m] row-major (elem_size 2 = bf16, 4 = fp32); writes vals [B, k] (same dtype) and
 * idx [B, k] int64. Groups {j : j % G == g}: a value t that at least k group maxima reach is
 * reached by at least k entries, so it bounds the row's k-th largest value from below and only
 * entries >= t can be in the top k (~k + a few of m at G 128). Requires 1 <= k <= G <= m.
 * Returns 1 if a row buffer could not be allocated. */
int topk_rows(const void *pre, int64_t B, int64_t m, int64_t k, int64_t G, int elem_size, int sorted,
              void *vals, int64_t *idx, int n_threads) {
    int bf16 = elem_size == 2, fail = 0;
    if (k < 1 || G < k || G > m || (elem_size != 2 && elem_size != 4)) return 1;
#pragma omp parallel num_threads(n_threads)
    {
        uint32_t *gmax = malloc(sizeof(uint32_t) * G);
        int64_t *cand = malloc(sizeof(int64_t) * m);
        if (!gmax || !cand) {
#pragma omp atomic write
            fail = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                const char *row = (const char *)pre + b * m * elem_size;
                group_max(row, bf16, m, G, gmax);
                int64_t n = candidates(row, bf16, m, kth_bound(gmax, G, k), cand);
                top_first(cand, n, k);
                if (sorted) sort_desc(cand, k);
                for (int64_t i = 0; i < k; i++) {
                    int64_t j = unpack_index(cand[i]);
                    idx[b * k + i] = j;
                    if (bf16) ((uint16_t *)vals)[b * k + i] = ((const uint16_t *)row)[j];
                    else ((uint32_t *)vals)[b * k + i] = ((const uint32_t *)row)[j];
                }
            }
        }
        free(gmax);
        free(cand);
    }
    return fail;
}

/* out[e] = sum_i A[r, i] * W[cols[e], i] for e in [crow[r], crow[r+1]); A [B, d] fp32,
 * W [m, d] fp32 (w_elem 4) or bf16 (w_elem 2), both row-major; fp32 accumulation. */
#define PF 2 /* prefetch distance in entries: ~15% faster at d 576 */
int sddmm_rows(const float *A, const void *W, int w_elem, const int64_t *crow, const int64_t *cols,
               int64_t B, int64_t d, float *out, int n_threads) {
    if (w_elem != 2 && w_elem != 4) return 1;
#pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t r = 0; r < B; r++) {
        const float *a = A + r * d;
        for (int64_t e = crow[r]; e < crow[r + 1]; e++) {
            if (e + PF < crow[B]) {  /* the row PF entries ahead: random rows defeat the prefetcher */
                const char *nx = (const char *)W + cols[e + PF] * d * w_elem;
                for (int64_t o = 0; o < d * w_elem; o += 64) __builtin_prefetch(nx + o, 0, 3);
            }
            out[e] = dot_f32(a, (const char *)W + cols[e] * d * w_elem, w_elem, d);
        }
    }
    return 0;
}

/* g[r] -= <g[r], W[r]> W[r] for every row r of g, W [m, d] fp32: the gradient of a unit-norm
 * decoder row without its component along the row, in one pass (torch: a product, a sum and an
 * addcmul, three passes over [m, d]). */
int project_out_rows(float *g, const float *W, int64_t m, int64_t d, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t r = 0; r < m; r++) {
        float *gr = g + r * d;
        const float *w = W + r * d;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < d; i++) dot += gr[i] * w[i];
#pragma omp simd
        for (int64_t i = 0; i < d; i++) gr[i] -= dot * w[i];
    }
    return 0;
}

#define CH 128 /* decode accumulators per row chunk (8 zmm): 64-192 ran within 8% */


/* <e, w> over d with e already rounded to bf16 (eb): vdpbf16ps where the CPU has it (the products
 * of a bf16 GEMM, fp32 accumulation), else converted fp32 FMAs. */
static inline float dot_bf16(const uint16_t *eb, const uint16_t *w, int64_t d) {
    float acc = 0.0f;
    int64_t i = 0;
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    __m512 v = _mm512_setzero_ps();
    for (; i + 32 <= d; i += 32)
        v = _mm512_dpbf16_ps(v, (__m512bh)_mm512_loadu_si512((const void *)(eb + i)),
                             (__m512bh)_mm512_loadu_si512((const void *)(w + i)));
    acc = _mm512_reduce_add_ps(v);
#endif
    for (; i < d; i++) acc += bf16_to_f32(eb[i]) * bf16_to_f32(w[i]);
    return acc;
}

static inline uint16_t f32_to_bf16(float f) {  /* round to nearest even (NaN kept NaN) */
    uint32_t b;
    memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static void to_bf16(const float *f, uint16_t *h, int64_t d) {
    int64_t i = 0;
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    for (; i + 32 <= d; i += 32)
        _mm512_storeu_si512((void *)(h + i), (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(f + i + 16),
                                                                           _mm512_loadu_ps(f + i)));
#endif
    for (; i < d; i++) h[i] = f32_to_bf16(f[i]);
}

/* The decoder forward and the gradients of the MSE loss L = (scale / 2) sum_r ||e_r||^2 in one pass
 * over the rows of a sparse code (e = x_hat - x, x_hat = bias + sum_e acts[e] W[cols[e]]):
 *   g_out[r]  = scale e[r]                                  (dL/dx_hat, [B, d] fp32)
 *   gv_out[e] = <g[r], W[cols[e]]> where acts[e] > 0, else 0   (dL/dcode, [nnz] fp32)
 *   *sq_out   = sum_r ||e_r||^2 (fp64),  gsum_out = sum_r g[r]  ([d], dL/db_dec)
 * The second product reads the row's decoder rows while they are still in cache (an embedding bag
 * then a sampled product read them twice from memory). W fp32 (w_elem 4) or bf16 (2); acts, bias
 * (may be NULL), x fp32; fp32 accumulation. With a bf16 W the products of the second sum take g
 * rounded to bf16, as a bf16 GEMM (autocast) would. */
int decode_sddmm(const int64_t *crow, const int64_t *cols, const float *acts, const void *W, int w_elem,
                 const float *bias, const float *x, int64_t B, int64_t d, float scale, float *g_out,
                 float *gv_out, double *sq_out, float *gsum_out, int n_threads) {
    int fail = 0;
    double sq = 0.0;
    if (w_elem != 2 && w_elem != 4) return 1;
    for (int64_t i = 0; i < d; i++) gsum_out[i] = 0.0f;
#pragma omp parallel num_threads(n_threads) reduction(+ : sq)
    {
        uint16_t *gb = malloc(sizeof(uint16_t) * d);
        float *gsum = calloc((size_t)d, sizeof(float));
        if (!gb || !gsum) {
#pragma omp atomic write
            fail = 1;
        } else {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < B; r++) {
                float *gr = g_out + r * d;
                const float *xr = x + r * d;
                const int64_t e0 = crow[r], e1 = crow[r + 1];
                for (int64_t i0 = 0; i0 < d; i0 += CH) {  /* CH accumulators stay in registers */
                    const int64_t n = d - i0 < CH ? d - i0 : CH;
                    float acc[CH];
                    for (int64_t i = 0; i < CH; i++) acc[i] = i < n ? (bias ? bias[i0 + i] : 0.0f) - xr[i0 + i] : 0.0f;
                    for (int64_t e = e0; e < e1; e++) {
                        const float a = acts[e];
                        if (!(a > 0.0f)) continue;
                        if (n < CH) {  /* the tail of a d that CH does not divide */
                            for (int64_t i = 0; i < n; i++) acc[i] += a * w_at(W, w_elem, cols[e] * d + i0 + i);
                        } else if (w_elem == 2) {
                            const uint16_t *w = (const uint16_t *)W + cols[e] * d + i0;
#pragma omp simd
                            for (int64_t i = 0; i < CH; i++) acc[i] += a * bf16_to_f32(w[i]);
                        } else {
                            const float *w = (const float *)W + cols[e] * d + i0;
#pragma omp simd
                            for (int64_t i = 0; i < CH; i++) acc[i] += a * w[i];
                        }
                    }
                    float rs = 0.0f;
#pragma omp simd reduction(+ : rs)
                    for (int64_t i = 0; i < n; i++) {
                        rs += acc[i] * acc[i];
                        gr[i0 + i] = scale * acc[i];
                        gsum[i0 + i] += scale * acc[i];
                    }
                    sq += rs;
                }
                if (w_elem == 2) to_bf16(gr, gb, d);
                for (int64_t e = e0; e < e1; e++) {
                    float dot = 0.0f;
                    if (acts[e] > 0.0f)
                        dot = w_elem == 2 ? dot_bf16(gb, (const uint16_t *)W + cols[e] * d, d)
                                          : dot_f32(gr, (const float *)W + cols[e] * d, 4, d);
                    gv_out[e] = dot;
                }
            }
#pragma omp critical
            for (int64_t i = 0; i < d; i++) gsum_out[i] += gsum[i];
        }
        free(gb);
        free(gsum);
    }
    *sq_out = sq;
    return fail;
}

/* A stable counting sort of entries by latent: order [n] (entry ids, latent j's in their original
 * order at order[offsets[j]:offsets[j+1]]) and offsets [m+1]. Returns 1 if a column is outside
 * [0, m) (nothing written past the buffers). */
int latent_order(const int64_t *cols, int64_t n, int64_t m, int64_t *order, int32_t *offsets) {
    int64_t *pos = calloc((size_t)m + 1, sizeof(int64_t));
    if (!pos) return 2;
    for (int64_t e = 0; e < n; e++) {
        if (cols[e] < 0 || cols[e] >= m) { free(pos); return 1; }
        pos[cols[e] + 1]++;
    }
    for (int64_t j = 0; j < m; j++) pos[j + 1] += pos[j];
    for (int64_t j = 0; j <= m; j++) offsets[j] = (int32_t)pos[j];
    for (int64_t e = 0; e < n; e++) order[pos[cols[e]]++] = e;
    free(pos);
    return 0;
}

/* W[r] /= ||W[r]|| for every row of norm > 0 (fp32 [m, d], in place), and when lp is not NULL its
 * bf16 copy (round to nearest even) in the same pass. */
int normalize_rows(float *W, uint16_t *lp, int64_t m, int64_t d, int n_threads) {
#pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t r = 0; r < m; r++) {
        float *w = W + r * d;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < d; i++) ss += (double)w[i] * w[i];
        if (ss > 0.0) {
            const float inv = (float)(1.0 / sqrt(ss));
#pragma omp simd
            for (int64_t i = 0; i < d; i++) w[i] *= inv;
        }
        if (lp) to_bf16(w, lp + r * d, d);
    }
    return 0;
}

/* The per-entry inputs of the two latent-major gradient sums, put in latent-major order in one pass
 * (p < n, e = order[p]): o_rows_d[p] = rows_d[e], o_rows_e[p] = rows_e[e], o_w_d[p] = w_d[e] and
 * o_w_e[p] = w_e[e] (fp32, or bf16 when w_elem is 2), and gsum_e[j] = sum of w_e over latent j's
 * entries (in entry order, as a serial index_add would add them). */
int gather_sorted(const int64_t *order, const int32_t *offsets, int64_t m, const int32_t *rows_d,
                  const int32_t *rows_e, const float *w_d, const float *w_e, int w_elem, int32_t *o_rows_d,
                  int32_t *o_rows_e, void *o_w_d, void *o_w_e, float *gsum_e) {
    if (w_elem != 2 && w_elem != 4) return 1;
    for (int64_t j = 0; j < m; j++) {
        float acc = 0.0f;
        for (int64_t p = offsets[j]; p < offsets[j + 1]; p++) {
            const int64_t e = order[p];
            o_rows_d[p] = rows_d[e];
            o_rows_e[p] = rows_e[e];
            if (w_elem == 2) {
                ((uint16_t *)o_w_d)[p] = f32_to_bf16(w_d[e]);
                ((uint16_t *)o_w_e)[p] = f32_to_bf16(w_e[e]);
            } else {
                ((float *)o_w_d)[p] = w_d[e];
                ((float *)o_w_e)[p] = w_e[e];
            }
            acc += w_e[e];
        }
        gsum_e[j] = acc;
    }
    return 0;
}
