/* aha's native CPU kernels for the sampler's decode step; see kernels.py for the layouts and how this file is
   compiled (once per machine, with the system compiler) and called (ctypes). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Row-parallel loops split only work this large (floats touched): below it a fork/join costs more than it saves. */
#define PAR_MIN 16384

/* Scores of one query per row against positions j < L. R = b * kv columns: column r is row r / kv, kv head
   r % kv. kt: keys (>= L, d, R); qt: queries (d, g, R), g query heads per kv head; s: (L, g, R).
     s[j, gi, r] = bias[(r / kv) * bs_b + j * bs_j] + sum_x qt[x, gi, r] * kt[j, x, r]
   Vectorised over r (no horizontal sums), four positions per pass so each query value is loaded once per four
   keys; the keys are read once, in address order. */
static void scores_one(const float *qt, const float *Kj, const float *bias, float *s, long j, long g, long R,
                       long kv, long d, long bs_b, long bs_j) {
    for (long gi = 0; gi < g; gi++) {
        float *S = s + (j * g + gi) * R;
        for (long r = 0; r < R; r++) S[r] = bias[(r / kv) * bs_b + j * bs_j];
        for (long x = 0; x < d; x++) {
            const float *Q = qt + (x * g + gi) * R, *K = Kj + x * R;
#pragma omp simd
            for (long r = 0; r < R; r++) S[r] += Q[r] * K[r];
        }
    }
}

void aha_attn_scores(const float *qt, const float *kt, const float *bias, float *s, long b, long kv, long g, long d,
                     long L, long bs_b, long bs_j, int nthreads) {
    const long R = b * kv, blocks = (L + 3) / 4;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
    for (long jb = 0; jb < blocks; jb++) {
        const long j = jb * 4;
        if (j + 4 > L) {
            for (long jj = j; jj < L; jj++) scores_one(qt, kt + jj * d * R, bias, s, jj, g, R, kv, d, bs_b, bs_j);
            continue;
        }
        const float *K0 = kt + j * d * R, *K1 = K0 + d * R, *K2 = K1 + d * R, *K3 = K2 + d * R;
        for (long gi = 0; gi < g; gi++) {
            float *S0 = s + (j * g + gi) * R, *S1 = S0 + g * R, *S2 = S1 + g * R, *S3 = S2 + g * R;
            for (long r = 0; r < R; r++) {
                const float *B = bias + (r / kv) * bs_b + j * bs_j;
                S0[r] = B[0];
                S1[r] = B[bs_j];
                S2[r] = B[2 * bs_j];
                S3[r] = B[3 * bs_j];
            }
            for (long x = 0; x < d; x++) {
                const float *Q = qt + (x * g + gi) * R;
                const long o = x * R;
#pragma omp simd
                for (long r = 0; r < R; r++) {
                    const float q = Q[r];
                    S0[r] += q * K0[o + r];
                    S1[r] += q * K1[o + r];
                    S2[r] += q * K2[o + r];
                    S3[r] += q * K3[o + r];
                }
            }
        }
    }
}

/* Weighted sum of values. p: (L, g, R) softmaxed scores; v: values (>= L, R, d); out: (R, g, d).
     out[r, gi, :] = sum_j p[j, gi, r] * v[j, r, :]
   Positions in blocks of 8: each output row stays in registers/L1 over a block while the values stream by. */
void aha_attn_mix(const float *p, const float *v, float *out, long b, long kv, long g, long d, long L, int nthreads) {
    const long R = b * kv, JB = 8;
    for (long i = 0; i < R * g * d; i++) out[i] = 0.f;
    for (long j0 = 0; j0 < L; j0 += JB) {
        const long j1 = j0 + JB < L ? j0 + JB : L;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
        for (long r = 0; r < R; r++) {
            for (long gi = 0; gi < g; gi++) {
                float *O = out + (r * g + gi) * d;
                for (long j = j0; j < j1; j++) {
                    const float pj = p[(j * g + gi) * R + r];
                    if (pj == 0.f) continue; /* masked position (left padding) */
                    const float *V = v + (j * R + r) * d;
#pragma omp simd
                    for (long x = 0; x < d; x++) O[x] += pj * V[x];
                }
            }
        }
    }
}
/* out[i, :] = w * (x[i, :] / sqrt(mean(x[i, :]^2) + eps)), the RMSNorm of Llama-family models. x: (n, dim). */
void aha_rms_norm(const float *x, const float *w, float *out, long n, long dim, float eps, int nthreads) {
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && n * dim >= PAR_MIN) schedule(static)
    for (long i = 0; i < n; i++) {
        const float *X = x + i * dim;
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (long c = 0; c < dim; c++) ss += X[c] * X[c];
        const float r = 1.f / sqrtf(ss / (float)dim + eps);
        float *O = out + i * dim;
#pragma omp simd
        for (long c = 0; c < dim; c++) O[c] = w[c] * (X[c] * r);
    }
}

/* The fused qkv projection of one new token per row -> RoPE on q and k, q scaled, into the kernel layouts.
   qkv: (b, (h + 2 kv) d); cos, sn: (max_len, d) tables, sn with its first half negated (rotate_half folded in);
   pos: (b,) positions. Writes qt (d, g, b*kv) (query head c*g + gi of row i at [x, gi, i*kv + c]), the new keys
   into kslot (d, b*kv) and the new values into vslot (b*kv, d). */
void aha_rope_qkv(const float *qkv, const float *cos, const float *sn, const long *pos, float *qt, float *kslot,
                  float *vslot, long b, long h, long kv, long d, float scale, int nthreads) {
    const long g = h / kv, R = b * kv, half = d / 2, width = (h + 2 * kv) * d;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && b * width >= PAR_MIN) schedule(static)
    for (long i = 0; i < b; i++) {
        float tmp[d];
        const float *row = qkv + i * width, *C = cos + pos[i] * d, *S = sn + pos[i] * d;
        for (long hh = 0; hh < h + kv; hh++) {
            const float *src = row + hh * d;
#pragma omp simd
            for (long x = 0; x < half; x++) tmp[x] = src[x] * C[x] + src[x + half] * S[x];
#pragma omp simd
            for (long x = half; x < d; x++) tmp[x] = src[x] * C[x] + src[x - half] * S[x];
            if (hh < h) {
                float *dst = qt + (hh % g) * R + i * kv + hh / g;
                for (long x = 0; x < d; x++) dst[x * g * R] = tmp[x] * scale;
            } else {
                float *dst = kslot + i * kv + (hh - h);
                for (long x = 0; x < d; x++) dst[x * R] = tmp[x];
            }
        }
        for (long c = 0; c < kv; c++) {
            const float *src = row + (h + kv + c) * d;
            float *dst = vslot + (i * kv + c) * d;
            for (long x = 0; x < d; x++) dst[x] = src[x];
        }
    }
}
/* exp(x) in fp32 (Cephes' expf: x = n ln2 + r, exp(r) by a polynomial, 2^n through the exponent bits), within
   about 2 ulp, written so that loops over it vectorise; exp(x < -87.3) = 0, so exp(-inf) = 0. */
static inline float aha_exp(float x) {
    const float y = x > 88.3f ? 88.3f : x;
    const float n = __builtin_floorf(y * 1.44269504088896341f + 0.5f);
    float r = y - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const union { int32_t i; float f; } scale = {((int32_t)n + 127) << 23};
    return x < -87.3f ? 0.f : p * scale.f;
}

/* Softmax over the rows of s (L, C) in place, for every column (the positions of each query head); the columns
   split across threads in contiguous chunks. */
static void softmax_cols_chunk(float *restrict s, long L, long C, long c0, long c1) {
    const long n = c1 - c0;
    float *restrict m = (float *)malloc(sizeof(float) * 2 * n), *restrict z = m + n;
    for (long c = 0; c < n; c++) {
        m[c] = -INFINITY;
        z[c] = 0.f;
    }
    for (long j = 0; j < L; j++) {
        const float *restrict S = s + j * C + c0;
#pragma omp simd
        for (long c = 0; c < n; c++) m[c] = S[c] > m[c] ? S[c] : m[c];
    }
    for (long j = 0; j < L; j++) {
        float *restrict S = s + j * C + c0;
#pragma omp simd
        for (long c = 0; c < n; c++) {
            S[c] = aha_exp(S[c] - m[c]);
            z[c] += S[c];
        }
    }
    for (long c = 0; c < n; c++) z[c] = 1.f / z[c];
    for (long j = 0; j < L; j++) {
        float *restrict S = s + j * C + c0;
#pragma omp simd
        for (long c = 0; c < n; c++) S[c] *= z[c];
    }
    free(m);
}

void aha_softmax_cols(float *restrict s, long L, long C, int nthreads) {
    const int nt = nthreads > 1 && L * C >= PAR_MIN && C >= 32 * nthreads ? nthreads : 1;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int t = 0; t < nt; t++) {
        const long c0 = (C * t / nt) & ~15L, c1 = t + 1 == nt ? C : (C * (t + 1) / nt) & ~15L;
        softmax_cols_chunk(s, L, C, c0, c1);
    }
}

/* SwiGLU of the fused gate/up projection: out[i, c] = silu(gu[i, c]) * gu[i, inter + c]. gu: (n, 2 inter). */
void aha_swiglu(const float *restrict gu, float *restrict out, long n, long inter, int nthreads) {
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && n * inter >= PAR_MIN) schedule(static)
    for (long i = 0; i < n; i++) {
        const float *restrict G = gu + i * 2 * inter, *restrict U = G + inter;
        float *restrict O = out + i * inter;
#pragma omp simd
        for (long c = 0; c < inter; c++) O[c] = G[c] / (1.f + aha_exp(-G[c])) * U[c];
    }
}

/* The residual add and the next RMSNorm: x += y in place, then out = RMSNorm(x) with weight w. x, y: (n, dim). */
void aha_add_rms_norm(float *restrict x, const float *restrict y, const float *restrict w, float *restrict out, long n,
                      long dim, float eps, int nthreads) {
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1 && n * dim >= PAR_MIN) schedule(static)
    for (long i = 0; i < n; i++) {
        float *restrict X = x + i * dim;
        const float *restrict Y = y + i * dim;
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (long c = 0; c < dim; c++) {
            X[c] += Y[c];
            ss += X[c] * X[c];
        }
        const float r = 1.f / sqrtf(ss / (float)dim + eps);
        float *restrict O = out + i * dim;
#pragma omp simd
        for (long c = 0; c < dim; c++) O[c] = w[c] * (X[c] * r);
    }
}
