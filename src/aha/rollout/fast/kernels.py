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

The C source (``kernels.c``, next to this file) is compiled once per machine with the system compiler (``cc -O3 -march=native``; cached under
``$AHA_KERNEL_DIR`` or ``~/.cache/aha/kernels``) and called through ``ctypes``. Without a compiler, or with
``AHA_NATIVE_ATTN=0``, ``load()`` returns None and the decode step keeps its torch matmuls. Same numbers up to
fp32 summation order.

**Pre-packed linear layers.** ``PackedLinear`` reorders a weight once into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, the op torch's own compiler uses for frozen CPU models); a decode
step then skips the per-call repacking that ``F.linear`` pays, about 1.3× faster at the 19m model's shapes with
the weights cold in cache. fp32 or bf16 weights (a bf16 one takes fp32 inputs, cast for the matmul). Falls back to ``F.linear`` where oneDNN is missing (``AHA_PACKED_LINEAR=0`` forces it).
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

SOURCE = (Path(__file__).parent / "kernels.c").read_text()  # compiled by load(); the cache key hashes it


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
    int_, float_ = ctypes.c_int, ctypes.c_float  # the last int of each: threads (work split over rows)
    lib.aha_rms_norm.argtypes = [ptr] * 3 + [long_] * 2 + [float_, int_]
    lib.aha_rope_qkv.argtypes = [ptr] * 7 + [long_] * 4 + [float_, int_]
    lib.aha_softmax_cols.argtypes = [ptr, long_, long_, int_]
    lib.aha_swiglu.argtypes = [ptr, ptr, long_, long_, int_]
    lib.aha_add_rms_norm.argtypes = [ptr] * 4 + [long_] * 2 + [float_, int_]
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
    lib.aha_softmax_cols(s.data_ptr(), length, g * r, threads)  # over positions, in place
    out = torch.empty((b, kv, g, d), dtype=qt.dtype)  # (R, g, d)
    lib.aha_attn_mix(s.data_ptr(), v.data_ptr(), out.data_ptr(), b, kv, g, d, length, threads)
    return out.view(b, heads, d)  # query head c·g + gi is kv head c's gi-th


def rms_norm(lib, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x²) + eps)`` over the last dim of a contiguous fp32 (n, dim) ``x``."""
    out = torch.empty_like(x)
    lib.aha_rms_norm(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.size(0), x.size(1), eps, torch.get_num_threads()
    )
    return out


def add_rms_norm(lib, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x += y`` in place (the residual stream), then ``rms_norm(x)``. x, y: contiguous fp32 (n, dim)."""
    out = torch.empty_like(x)
    lib.aha_add_rms_norm(
        x.data_ptr(),
        y.data_ptr(),
        weight.data_ptr(),
        out.data_ptr(),
        x.size(0),
        x.size(1),
        eps,
        torch.get_num_threads(),
    )
    return out


def swiglu(lib, gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a contiguous fp32 (n, 2·inter) fused projection: (n, inter)."""
    n, inter = gate_up.size(0), gate_up.size(1) // 2
    out = torch.empty((n, inter), dtype=gate_up.dtype)
    lib.aha_swiglu(gate_up.data_ptr(), out.data_ptr(), n, inter, torch.get_num_threads())
    return out


def rope_qkv(lib, qkv, cos, sin, pos, k_slot, v_slot, heads: int, kv_heads: int, scale: float) -> torch.Tensor:
    """Split the fused projection ``qkv`` (B, (heads + 2 kv) d) of one token per row: RoPE at ``pos`` (B,) int64
    from the (max_len, d) tables (``sin``'s first half negated), the queries scaled and returned as (d, g, B·kv)
    for ``attend``, the keys written into ``k_slot`` (d, B, kv) and the values into ``v_slot`` (B, kv, d)."""
    b, d = qkv.size(0), cos.size(-1)
    qt = torch.empty((d, heads // kv_heads, b * kv_heads), dtype=qkv.dtype)
    lib.aha_rope_qkv(
        qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), pos.data_ptr(), qt.data_ptr(), k_slot.data_ptr(),
        v_slot.data_ptr(), b, heads, kv_heads, d, scale, torch.get_num_threads(),
    )  # fmt: skip
    return qt


PACKED_DTYPES = (torch.float32, torch.bfloat16)


def _packing_works(dtype: torch.dtype = torch.float32) -> bool:
    return os.environ.get("AHA_PACKED_LINEAR", "1") != "0" and dtype in PACKED_DTYPES and _mkldnn_packing(dtype)


@cache
def _mkldnn_packing(dtype: torch.dtype = torch.float32) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w, x = torch.randn(8, 4), torch.randn(3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), None)
        got = torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, None, "none", [], "")
        want = F.linear(x.to(dtype), w.to(dtype))
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        return got.dtype == dtype and bool(torch.allclose(got.float(), want.float(), atol=tol, rtol=tol))
    except (RuntimeError, AttributeError):
        return False


class PackedLinear:
    """``y = x @ W.T + b`` with W reordered once for oneDNN (fp32 or bf16, CPU); plain ``F.linear`` where that is
    unavailable. The matmul runs in W's dtype: an input of another dtype is cast to it for the matmul alone and
    the result cast back (a bf16 W under fp32 activations: bf16 matmul, fp32 in and out). A snapshot:
    re-create it after the weight changes. ``rows`` is the batch the packing is tuned for."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, rows: int | None = None) -> None:
        if bias is not None and bias.dtype != weight.dtype:
            raise ValueError(f"PackedLinear: bias {bias.dtype} and weight {weight.dtype} differ")
        self.weight, self.bias, self.dtype = weight, bias, weight.dtype
        self.packed = None
        if weight.device.type == "cpu" and _packing_works(weight.dtype):
            # ``rows``: the expected batch; oneDNN blocks the weight for it (any batch still works), 7% faster
            # at 64 rows than packing for no particular batch (19m shapes, weights cold)
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
            self.weight = None  # the packed copy is all the matmul reads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x if x.dtype == self.dtype else x.to(self.dtype)
        if self.packed is None:
            y = F.linear(y, self.weight, self.bias)
        else:
            y = torch.ops.mkldnn._linear_pointwise(y, self.packed, self.bias, "none", [], "")
        return y if y.dtype == x.dtype else y.to(x.dtype)
