"""Native CPU kernels for the sampler's decode step, and pre-packed matrix multiplies.

**Decode attention.** One new token per row attends to every cached position. As torch ops that is a batch of
B·heads tiny matrix products (1×d by d×L), and a CPU BLAS spends more time per tiny product than reading the
cache costs, so the step runs at a third of the memory bandwidth. Here the cache is stored *position-major*
(keys ``(max_len, d, B, kv_heads)``, values ``(max_len, B, kv_heads, d)``), so position j of every row and head is
one contiguous slab, and two small C loops read the keys (scores) and then the values (weighted sum) in address
order, at close to the memory bandwidth (2.5x the batched matmuls at the 19m model's shapes, cache cold):

    s[j, b, h] = q[b, h] · k[j, b, h // g] + bias[b, j]        (aha_attn_scores; g = heads per kv head)
    p = softmax_j(s)                                            (aha_softmax_cols)
    o[b, h]    = Σ_j p[j, b, h] · v[j, b, h // g]               (aha_attn_mix)

Keys are stored with d before B so the scores loop runs over rows and heads in SIMD lanes, with no
horizontal sums.

The C source below is compiled once per machine with the system compiler (``cc -O3 -march=native``; cached under
``$AHA_KERNEL_DIR`` or ``~/.cache/aha/kernels``) and called through ``ctypes``. Without a compiler, or with
``AHA_NATIVE_ATTN=0``, ``load()`` returns None and the decode step keeps its torch matmuls. Same numbers up to
fp32 summation order.

**Pre-packed linear layers.** ``PackedLinear`` reorders a weight once into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, the op torch's own compiler uses for frozen CPU models); a decode
step then skips the per-call repacking that ``F.linear`` pays, about 1.3× faster at the 19m model's shapes with
the weights cold in cache. Falls back to ``F.linear`` where oneDNN is missing (``AHA_PACKED_LINEAR=0`` forces it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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
void aha_rms_norm(const float *x, const float *w, float *out, long n, long dim, float eps) {
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
                  float *vslot, long b, long h, long kv, long d, float scale) {
    const long g = h / kv, R = b * kv, half = d / 2, width = (h + 2 * kv) * d;
    float *tmp = (float *)malloc(sizeof(float) * d);
    for (long i = 0; i < b; i++) {
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
    free(tmp);
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

/* Softmax over the rows of s (L, C) in place, for every column (the positions of each query head). */
void aha_softmax_cols(float *restrict s, long L, long C) {
    float *restrict m = (float *)malloc(sizeof(float) * 2 * C), *restrict z = m + C;
    for (long c = 0; c < C; c++) {
        m[c] = -INFINITY;
        z[c] = 0.f;
    }
    for (long j = 0; j < L; j++) {
        const float *restrict S = s + j * C;
#pragma omp simd
        for (long c = 0; c < C; c++) m[c] = S[c] > m[c] ? S[c] : m[c];
    }
    for (long j = 0; j < L; j++) {
        float *restrict S = s + j * C;
#pragma omp simd
        for (long c = 0; c < C; c++) {
            S[c] = aha_exp(S[c] - m[c]);
            z[c] += S[c];
        }
    }
    for (long c = 0; c < C; c++) z[c] = 1.f / z[c];
    for (long j = 0; j < L; j++) {
        float *restrict S = s + j * C;
#pragma omp simd
        for (long c = 0; c < C; c++) S[c] *= z[c];
    }
    free(m);
}

/* SwiGLU of the fused gate/up projection: out[i, c] = silu(gu[i, c]) * gu[i, inter + c]. gu: (n, 2 inter). */
void aha_swiglu(const float *restrict gu, float *restrict out, long n, long inter) {
    for (long i = 0; i < n; i++) {
        const float *restrict G = gu + i * 2 * inter, *restrict U = G + inter;
        float *restrict O = out + i * inter;
#pragma omp simd
        for (long c = 0; c < inter; c++) O[c] = G[c] / (1.f + aha_exp(-G[c])) * U[c];
    }
}

/* The residual add and the next RMSNorm: x += y in place, then out = RMSNorm(x) with weight w. x, y: (n, dim). */
void aha_add_rms_norm(float *restrict x, const float *restrict y, const float *restrict w, float *restrict out, long n,
                      long dim, float eps) {
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
"""

# first that compiles wins; -fno-math-errno -fno-trapping-math let the loops around aha_exp vectorise (3x faster) and
# change no result (no errno is read, no float trap is enabled)
FAST = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
FLAGS = [[*FAST, "-march=native", "-fopenmp"], [*FAST, "-march=native"], ["-O3"]]


def _kernel_dir() -> Path:
    return Path(os.environ.get("AHA_KERNEL_DIR") or Path.home() / ".cache" / "aha" / "kernels")


def _machine_key(compiler: str) -> str:
    """What the compiled library depends on: source, compiler, and CPU (``-march=native``)."""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
    except OSError:
        pass
    return hashlib.sha256("\0".join([SOURCE, str(FLAGS), version, flags, platform.machine()]).encode()).hexdigest()[:16]


def _compile(compiler: str, out: Path) -> bool:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "attn.c"
        src.write_text(SOURCE)
        for flags in FLAGS:
            lib = Path(tmp) / "attn.so"
            cmd = [compiler, *flags, "-fPIC", "-shared", str(src), "-o", str(lib), "-lm"]
            try:
                ok = subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                os.replace(lib, out)  # atomic: concurrent processes (DDP ranks) never load a half-written file
                return True
    return False


def load() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use, then cached on disk), or None if disabled or no compiler works."""
    if os.environ.get("AHA_NATIVE_ATTN", "1") == "0":
        return None
    return _load()


@cache
def _load() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    path = _kernel_dir() / f"aha_attn_{_machine_key(compiler)}.so"
    try:
        if not path.exists() and not _compile(compiler, path):
            return None
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    long_, ptr = ctypes.c_long, ctypes.c_void_p
    lib.aha_attn_scores.argtypes = [ptr] * 4 + [long_] * 7 + [ctypes.c_int]
    lib.aha_attn_mix.argtypes = [ptr] * 3 + [long_] * 5 + [ctypes.c_int]
    lib.aha_rms_norm.argtypes = [ptr] * 3 + [long_] * 2 + [ctypes.c_float]
    lib.aha_rope_qkv.argtypes = [ptr] * 7 + [long_] * 4 + [ctypes.c_float]
    lib.aha_softmax_cols.argtypes = [ptr, long_, long_]
    lib.aha_swiglu.argtypes = [ptr, ptr, long_, long_]
    lib.aha_add_rms_norm.argtypes = [ptr] * 4 + [long_] * 2 + [ctypes.c_float]
    fns = (lib.aha_attn_scores, lib.aha_attn_mix, lib.aha_rms_norm, lib.aha_rope_qkv, lib.aha_softmax_cols)
    for fn in (*fns, lib.aha_swiglu, lib.aha_add_rms_norm):
        fn.restype = None
    return lib


def decode_attention(
    q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor, length: int, bias: torch.Tensor
) -> torch.Tensor:
    """Attention of one new query per row over the first ``length`` cached positions.

    q: (B, heads, d) fp32, already scaled; kt: (max_len, d, B, kv_heads) keys and v: (max_len, B, kv_heads, d)
    values, both contiguous (``SlabLayer(position_major=True)``); bias: (B, >= length) additive mask (0 or -inf),
    any strides. Returns (B, heads, d)."""
    lib = load()
    if lib is None:
        raise RuntimeError("aha's native attention kernel is not available (no C compiler, or AHA_NATIVE_ATTN=0)")
    b, h, d = q.shape
    kv = v.size(2)
    if not (q.dtype == kt.dtype == v.dtype == bias.dtype == torch.float32 and q.device.type == "cpu"):
        raise ValueError("decode_attention: fp32 CPU tensors only")
    if kt.shape[1:] != (d, b, kv) or v.shape[1:] != (b, kv, d) or h % kv or length > min(kt.size(0), v.size(0)):
        raise ValueError(f"decode_attention: shapes q {tuple(q.shape)} kt {tuple(kt.shape)} v {tuple(v.shape)}")
    if bias.dim() != 2 or bias.shape[0] != b or bias.size(1) < length:
        raise ValueError(f"decode_attention: bias {tuple(bias.shape)} is not (B, >= {length})")
    if not (kt.is_contiguous() and v.is_contiguous()):
        raise ValueError("decode_attention: the caches must be contiguous")
    qt = q.view(b, kv, h // kv, d).permute(3, 2, 0, 1).contiguous().view(d, h // kv, b * kv)  # (d, g, B·kv)
    return attend(lib, qt, kt, v, length, bias, h)


def attend(lib, qt: torch.Tensor, kt: torch.Tensor, v: torch.Tensor, length: int, bias: torch.Tensor, heads: int):
    """``decode_attention`` on queries already in the kernel's layout, qt: (d, g, B·kv) contiguous, without the
    checks (the decode step's inner loop). Returns (B, heads, d)."""
    d, g, r = qt.shape
    b, kv = v.size(1), v.size(2)
    threads = torch.get_num_threads()
    s = torch.empty((length, g, r), dtype=qt.dtype)  # (L, g, R)
    lib.aha_attn_scores(
        qt.data_ptr(), kt.data_ptr(), bias.data_ptr(), s.data_ptr(), b, kv, g, d, length, bias.stride(0),
        bias.stride(1), threads,
    )  # fmt: skip
    lib.aha_softmax_cols(s.data_ptr(), length, g * r)  # over positions, in place
    out = torch.empty((b, kv, g, d), dtype=qt.dtype)  # (R, g, d)
    lib.aha_attn_mix(s.data_ptr(), v.data_ptr(), out.data_ptr(), b, kv, g, d, length, threads)
    return out.view(b, heads, d)  # query head c·g + gi is kv head c's gi-th


def rms_norm(lib, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x²) + eps)`` over the last dim of a contiguous fp32 (n, dim) ``x``."""
    out = torch.empty_like(x)
    lib.aha_rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.size(0), x.size(1), eps)
    return out


def add_rms_norm(lib, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x += y`` in place (the residual stream), then ``rms_norm(x)``. x, y: contiguous fp32 (n, dim)."""
    out = torch.empty_like(x)
    lib.aha_add_rms_norm(x.data_ptr(), y.data_ptr(), weight.data_ptr(), out.data_ptr(), x.size(0), x.size(1), eps)
    return out


def swiglu(lib, gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a contiguous fp32 (n, 2·inter) fused projection: (n, inter)."""
    n, inter = gate_up.size(0), gate_up.size(1) // 2
    out = torch.empty((n, inter), dtype=gate_up.dtype)
    lib.aha_swiglu(gate_up.data_ptr(), out.data_ptr(), n, inter)
    return out


def rope_qkv(lib, qkv, cos, sin, pos, k_slot, v_slot, heads: int, kv_heads: int, scale: float) -> torch.Tensor:
    """Split the fused projection ``qkv`` (B, (heads + 2 kv) d) of one token per row: RoPE at ``pos`` (B,) int64
    from the (max_len, d) tables (``sin``'s first half negated), the queries scaled and returned as (d, g, B·kv)
    for ``attend``, the keys written into ``k_slot`` (d, B, kv) and the values into ``v_slot`` (B, kv, d)."""
    b, d = qkv.size(0), cos.size(-1)
    qt = torch.empty((d, heads // kv_heads, b * kv_heads), dtype=qkv.dtype)
    lib.aha_rope_qkv(
        qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), pos.data_ptr(), qt.data_ptr(), k_slot.data_ptr(),
        v_slot.data_ptr(), b, heads, kv_heads, d, scale,
    )  # fmt: skip
    return qt


def _packing_works() -> bool:
    return os.environ.get("AHA_PACKED_LINEAR", "1") != "0" and _mkldnn_packing()


@cache
def _mkldnn_packing() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w, x = torch.randn(8, 4), torch.randn(3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(got, F.linear(x, w), atol=1e-5))
    except (RuntimeError, AttributeError):
        return False


class PackedLinear:
    """``y = x @ W.T + b`` with W reordered once for oneDNN (fp32 CPU); plain ``F.linear`` where that is
    unavailable. A snapshot: re-create it after the weight changes (the sampler builds its decoder per call).
    ``rows`` is the batch the packing is tuned for."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, rows: int | None = None) -> None:
        self.weight, self.bias = weight, bias
        self.packed = None
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and _packing_works():
            # ``rows``: the expected batch; oneDNN blocks the weight for it (any batch still works), 7% faster
            # at 64 rows than packing for no particular batch (19m shapes, weights cold)
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
