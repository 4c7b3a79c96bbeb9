"""aha's native decode-attention kernel and pre-packed linear layers against plain torch, and their fallbacks."""

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from aha.rollout.fast import kernels
from aha.rollout.fast.decode import SlabLayer

needs_kernel = pytest.mark.skipif(kernels.load() is None, reason="no C compiler for aha's native kernel")


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# (rows, threads): the kernels split rows over threads only above a work threshold (PAR_MIN floats in kernels.c);
# the large cases take that parallel path
ROWS_THREADS = [(7, 1), (7, 2), (300, 2)]


def _reference(q, kt, v, length, bias):
    """Softmax attention of q (B, h, d) over the caches' first ``length`` positions, with torch matmuls."""
    b, h, d = q.shape
    kv = v.size(2)
    keys = kt[:length].permute(2, 3, 0, 1)  # (B, kv, L, d)
    values = v[:length].permute(1, 2, 0, 3)
    scores = torch.matmul(q.view(b, kv, h // kv, d), keys.transpose(-1, -2)) + bias[:, None, None, :length]
    return torch.matmul(scores.softmax(-1), values).reshape(b, h, d)


def _case(b, h, kv, d, max_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, d, generator=g) * d**-0.5
    kt = torch.randn(max_len, d, b, kv, generator=g)
    v = torch.randn(max_len, b, kv, d, generator=g)
    bias = torch.zeros(b, max_len)
    bias[0, :3] = float("-inf")  # left padding of row 0
    bias[-1, :1] = float("-inf")
    return q, kt, v, bias


@needs_kernel
@pytest.mark.parametrize("shape", [(64, 6, 6, 64), (64, 4, 4, 32), (5, 8, 2, 16), (3, 4, 1, 8), (1, 2, 2, 4)])
@pytest.mark.parametrize("length", [4, 5, 11, 24])
def test_decode_attention_matches_torch(shape, length):
    b, h, kv, d = shape
    q, kt, v, bias = _case(b, h, kv, d, max_len=24)
    got = kernels.decode_attention(q, kt, v, length, bias)
    torch.testing.assert_close(got, _reference(q, kt, v, length, bias), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_decode_attention_with_threads_and_a_strided_mask():
    q, kt, v, bias = _case(6, 4, 2, 16, max_len=30, seed=1)
    wide = torch.zeros(6, 3, 40)  # bias as a strided view, as the sampler passes bias[:, 0, 0]
    wide[:, 1, :30] = bias
    strided = wide[:, 1]
    with _threads(2):
        got = kernels.decode_attention(q, kt, v, 29, strided)
    torch.testing.assert_close(got, _reference(q, kt, v, 29, bias), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_masked_positions_get_no_weight():
    q, kt, v, bias = _case(2, 2, 2, 8, max_len=10)
    bias[1, :6] = float("-inf")
    v_changed = v.clone()
    v_changed[:6, 1] = 1e6  # values a masked position would drag in
    a = kernels.decode_attention(q, kt, v, 10, bias)
    b = kernels.decode_attention(q, kt, v_changed, 10, bias)
    assert torch.equal(a[1], b[1]) and torch.isfinite(b).all()


@needs_kernel
def test_decode_attention_rejects_bad_inputs():
    q, kt, v, bias = _case(2, 4, 2, 8, max_len=10)
    with pytest.raises(ValueError, match="shapes"):
        kernels.decode_attention(q, kt, v, 11, bias)  # longer than the cache
    with pytest.raises(ValueError, match="shapes"):
        kernels.decode_attention(q[:, :3], kt, v, 5, bias)  # 3 heads over 2 kv heads
    with pytest.raises(ValueError, match="bias"):
        kernels.decode_attention(q, kt, v, 5, bias[:, :4])
    with pytest.raises(ValueError, match="fp32"):
        kernels.decode_attention(q.double(), kt, v, 5, bias)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.decode_attention(q, kt.transpose(2, 3).contiguous().transpose(2, 3), v, 5, bias)


def test_load_is_none_when_disabled_or_the_compiler_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("AHA_NATIVE_ATTN", "0")
    assert kernels.load() is None
    with pytest.raises(RuntimeError, match="AHA_NATIVE_ATTN"):
        kernels.decode_attention(*_case(1, 2, 2, 4, 5)[:3], 5, torch.zeros(1, 5))
    monkeypatch.setenv("AHA_NATIVE_ATTN", "1")
    monkeypatch.setenv("AHA_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    kernels._load.cache_clear()
    try:
        assert kernels.load() is None
        assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    finally:
        kernels._load.cache_clear()


def test_kernel_is_compiled_once_into_the_cache_dir(monkeypatch, tmp_path):
    if kernels.load() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("AHA_KERNEL_DIR", str(tmp_path))
    kernels._load.cache_clear()
    try:
        assert kernels.load() is not None
        built = list(tmp_path.glob("aha_attn_*.so"))
        assert len(built) == 1
        mtime = built[0].stat().st_mtime_ns
        kernels._load.cache_clear()
        assert kernels.load() is not None
        assert built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    finally:
        kernels._load.cache_clear()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_packed_linear_matches_f_linear(bias, rows):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 32, generator=g)
    b = torch.randn(48, generator=g) if bias else None
    x = torch.randn(rows, 64, generator=g)[:, ::2]  # a strided input, as the decode step's slices
    lin = kernels.PackedLinear(w, b)
    assert (lin.packed is not None) == kernels._packing_works()
    torch.testing.assert_close(lin(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_packed_linear_falls_back(monkeypatch):
    monkeypatch.setenv("AHA_PACKED_LINEAR", "0")
    w, x = torch.randn(5, 3), torch.randn(2, 3)
    lin = kernels.PackedLinear(w)
    assert lin.packed is None
    assert torch.equal(lin(x), F.linear(x, w))
    assert kernels.PackedLinear(w.double()).packed is None  # fp32 and bf16 only


@pytest.mark.parametrize("packed", [True, False])
def test_bf16_packed_linear_casts_for_the_matmul_alone(packed, monkeypatch):
    """A bf16 weight under fp32 inputs: the matmul in bf16 (as F.linear on bf16 operands), fp32 in and out."""
    if not packed:
        monkeypatch.setenv("AHA_PACKED_LINEAR", "0")
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 32, generator=g).bfloat16(), torch.randn(48, generator=g).bfloat16()
    x = torch.randn(7, 32, generator=g)
    lin = kernels.PackedLinear(w, b, rows=7)
    assert (lin.packed is not None) == (packed and kernels._packing_works(torch.bfloat16))
    y = lin(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.linear(x.bfloat16(), w, b).float(), rtol=2e-2, atol=2e-2)
    assert (y - F.linear(x, w.float(), b.float())).abs().max() > 1e-4  # the input was rounded to bf16
    with pytest.raises(ValueError, match="bias"):
        kernels.PackedLinear(w, b.float())


def test_position_major_slab_layer_holds_the_same_cache():
    g = torch.Generator().manual_seed(0)
    k1, v1 = torch.randn(3, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g)
    k2, v2 = torch.randn(3, 2, 1, 4, generator=g), torch.randn(3, 2, 1, 4, generator=g)
    plain, major = SlabLayer(8), SlabLayer(8, position_major=True)
    for layer in (plain, major):
        layer.update(k1, v1)
        layer.update(k2, v2)
    assert major.k_buf.shape == (8, 4, 3, 2) and major.v_buf.shape == (8, 3, 2, 4)
    assert torch.equal(major.keys, plain.keys) and torch.equal(major.values, plain.values)
    assert torch.equal(major.keys, torch.cat([k1, k2], 2))
    keep = torch.tensor([2, 0, 0, 1])  # drops and repeats rows (the sampler's shared prefill repeats them)
    for layer in (plain, major):
        layer.batch_select_indices(keep)
    assert torch.equal(major.keys, plain.keys) and torch.equal(major.values, plain.values)
    assert torch.equal(major.values, torch.cat([v1, v2], 2)[keep])
    assert torch.equal(plain.keys, torch.cat([k1, k2], 2)[keep])
    assert major.k_buf.shape == (8, 4, 4, 2) and plain.k_buf.shape == (4, 2, 8, 4)  # room left for more positions
    k3, v3 = torch.randn(4, 2, 2, 4, generator=g), torch.randn(4, 2, 2, 4, generator=g)
    for layer in (plain, major):
        layer.update(k3, v3)
        assert torch.equal(layer.keys, torch.cat([torch.cat([k1, k2], 2)[keep], k3], 2))
        assert torch.equal(layer.values, torch.cat([torch.cat([v1, v2], 2)[keep], v3], 2))
    assert major.k_buf.is_contiguous() and major.v_buf.is_contiguous()


@needs_kernel
@pytest.mark.parametrize("dim", [5, 64, 384])
@pytest.mark.parametrize("rows,threads", ROWS_THREADS)
def test_rms_norm_matches_torch(dim, rows, threads):
    g = torch.Generator().manual_seed(dim)
    x, w = torch.randn(rows, dim, generator=g) * 3, torch.randn(dim, generator=g)
    want = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    with _threads(threads):
        got = kernels.rms_norm(kernels.load(), x, w, 1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,d", [(4, 4, 32), (6, 2, 16), (3, 1, 8)])
@pytest.mark.parametrize("b,threads", [(5, 1), (5, 2), (200, 2)])
def test_rope_qkv_matches_torch(heads, kv_heads, d, b, threads):
    half, max_len = d // 2, 40
    g = torch.Generator().manual_seed(d)
    qkv = torch.randn(b, (heads + 2 * kv_heads) * d, generator=g)
    cos, sin = torch.randn(max_len, d, generator=g), torch.randn(max_len, d, generator=g)
    pos = torch.tensor([0, 3, 39, 7, 7] * (b // 5))
    k_slot, v_slot = torch.full((d, b, kv_heads), float("nan")), torch.full((b, kv_heads, d), float("nan"))
    with _threads(threads):
        qt = kernels.rope_qkv(kernels.load(), qkv, cos, sin, pos, k_slot, v_slot, heads, kv_heads, 0.25)
    # torch: x·cos + roll(x, d/2)·sin per head (sin's first half carries rotate_half's minus sign)
    qk = qkv[:, : (heads + kv_heads) * d].view(b, heads + kv_heads, d)
    rot = qk * cos[pos][:, None] + qk.roll(half, -1) * sin[pos][:, None]
    q = rot[:, :heads] * 0.25  # (b, heads, d)
    want_qt = q.view(b, kv_heads, heads // kv_heads, d).permute(3, 2, 0, 1).reshape(d, heads // kv_heads, -1)
    torch.testing.assert_close(qt, want_qt, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_slot, rot[:, heads:].permute(2, 0, 1), rtol=1e-6, atol=1e-6)
    assert torch.equal(v_slot, qkv[:, (heads + kv_heads) * d :].view(b, kv_heads, d))


@needs_kernel
@pytest.mark.parametrize("rows,threads", ROWS_THREADS)
def test_swiglu_softmax_and_add_rms_norm_match_torch(rows, threads):
    lib = kernels.load()
    g = torch.Generator().manual_seed(5)
    gu = torch.randn(rows, 2 * 75, generator=g) * 30  # large |gate|: exp over- and underflow paths
    want = F.silu(gu[:, :75]) * gu[:, 75:]
    with _threads(threads):
        got = kernels.swiglu(lib, gu)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)

    s = torch.randn(rows + 6, 21 * rows, generator=g) * 20  # (positions, columns): threads split the columns
    s[:5, 3] = float("-inf")  # masked positions of one column: exactly 0 after the softmax
    s[:5, -1] = float("-inf")
    want = s.softmax(0)
    lib.aha_softmax_cols(s.data_ptr(), s.size(0), s.size(1), threads)
    torch.testing.assert_close(s, want, rtol=2e-6, atol=1e-7)
    assert (s[:5, 3] == 0).all() and (s[:5, -1] == 0).all()

    x, y, w = (torch.randn(rows, 80, generator=g) for _ in range(3))
    w = w[0].contiguous()
    want_x = x + y
    want = w * (want_x * torch.rsqrt(want_x.pow(2).mean(-1, keepdim=True) + 1e-6))
    with _threads(threads):
        got = kernels.add_rms_norm(lib, x, y, w, 1e-6)
    torch.testing.assert_close(x, want_x)  # the residual stream, updated in place
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
