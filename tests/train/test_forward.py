"""``token_logps``' fast path (length buckets, one prompt forward per group, chunked lm_head) against one
padded ``model(...)`` call: the same log-probs, entropies and parameter gradients."""

from __future__ import annotations

import pytest
import torch

from aha.models.tiny import build_tiny
from aha.train import forward

B, G, P, T = 24, 4, 9, 20


@pytest.fixture(scope="module")
def model():
    m, _ = build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, seed=3)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # O(1) weights: log-probs far from uniform, so differences would show
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else p.shape[1] ** -0.5))
    m.train()
    return m


def batch(shared: bool, seed: int = 0):
    """(B, P) left-padded prompts (G rows per prompt when `shared`, in shuffled order), (B, T) completions with
    EOS-style masks of many lengths, one of them empty."""
    g = torch.Generator().manual_seed(seed)
    n = B // G if shared else B
    ids = torch.randint(5, 100, (n, P), generator=g)
    mask = torch.ones(n, P, dtype=torch.long)
    for i in range(n):
        mask[i, : i % 4] = 0
    ids = ids.masked_fill(mask == 0, 1)
    if shared:
        ids, mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
        perm = torch.randperm(B, generator=g)
        ids, mask = ids[perm], mask[perm]
    comp = torch.randint(5, 100, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[3], lengths[5] = 0, T
    cmask = (torch.arange(T)[None] < lengths[:, None]).long()
    return ids, mask, comp, cmask


def run(fn, model, parts, temperature=0.7):
    model.zero_grad(set_to_none=True)
    logps, ent = fn(model, *parts, temperature, with_entropy=True)
    weights = torch.linspace(-1.0, 1.0, B)[:, None]  # a loss that weighs rows differently
    (logps * parts[3] * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logps.detach(), ent, grads


def assert_same(ref, new, cmask):
    m = cmask.bool()
    torch.testing.assert_close(new[0][m], ref[0][m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new[1][m], ref[1][m], rtol=1e-5, atol=1e-5)
    assert not new[1].requires_grad
    assert (new[0][~m] == 0).all() and (new[1][~m] == 0).all()
    for name, g in ref[2].items():  # fp32 rounding only: summation orders differ
        rel = float((new[2][name] - g).norm() / g.norm())
        assert rel < 1e-5, (name, rel)


@pytest.mark.parametrize("shared", [True, False])
def test_fast_path_equals_one_padded_forward(model, shared, monkeypatch):
    calls = []
    real = forward.DynamicCache

    def spy():
        calls.append(1)
        return real()

    monkeypatch.setattr(forward, "DynamicCache", spy)
    monkeypatch.setitem(forward.TOKENS_PER_CHUNK, "cpu", 64)  # several buckets of different widths
    parts = batch(shared)
    assert forward._plain_parts(model) is not None
    ref = run(forward._token_logps_plain, model, parts)
    new = run(forward.token_logps, model, parts)
    assert bool(calls) == shared  # the prompt ran once per group only when groups share it
    assert_same(ref, new, parts[3])


def test_lm_head_in_small_chunks(model, monkeypatch):
    monkeypatch.setattr(forward, "LOGITS_BUDGET", 3 * model.config.vocab_size)  # 3 rows of logits at a time
    parts = batch(True, seed=1)
    assert_same(run(forward._token_logps_plain, model, parts), run(forward.token_logps, model, parts), parts[3])


def test_lm_head_logps_gradient_matches_autograd():
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=True)
    h = torch.randn(13, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (13,), generator=g)
    up = torch.randn(13, generator=g)
    logp, ent = forward.lm_head_logps(h, head, targets, 0.5, budget=4 * 11)
    (logp * up).sum().backward()
    mine = (h.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    h.grad = None
    head.zero_grad()
    logits = head(h) / 0.5
    ref = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    (ref * up).sum().backward()
    torch.testing.assert_close(logp, ref.detach())
    torch.testing.assert_close(ent, -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).detach())
    for a, b in zip(mine, (h.grad, head.weight.grad, head.bias.grad)):
        torch.testing.assert_close(a, b)


def test_lm_head_entropy_gradient_matches_autograd():
    """With entropy_grad the entropy output carries d H / d logits = -p (log p + H) too (the entropy bonus's)."""
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(8, 11, bias=True)
    h = torch.randn(13, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (13,), generator=g)
    up, up_ent = torch.randn(13, generator=g), torch.randn(13, generator=g)
    for use_logp in (True, False):  # the entropy alone, too
        logp, ent = forward.lm_head_logps(h, head, targets, 0.5, budget=4 * 11, entropy_grad=True)
        ((logp * up).sum() * use_logp + (ent * up_ent).sum()).backward()
        mine = (h.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
        h.grad = None
        head.zero_grad()
        logits = head(h) / 0.5
        ref = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
        ref_ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        ((ref * up).sum() * use_logp + (ref_ent * up_ent).sum()).backward()
        for a, b in zip(mine, (h.grad, head.weight.grad, head.bias.grad)):
            torch.testing.assert_close(a, b)
        h.grad = None
        head.zero_grad()


def test_fast_path_entropy_gradient_equals_one_padded_forward(model, monkeypatch):
    monkeypatch.setitem(forward.TOKENS_PER_CHUNK, "cpu", 64)
    parts = batch(True, seed=3)
    weights = torch.linspace(-1.0, 1.0, B)[:, None]
    grads = []
    for fn in (forward._token_logps_plain, forward.token_logps):
        model.zero_grad(set_to_none=True)
        logps, ent = fn(model, *parts, 0.7, with_entropy=True, entropy_grad=True)
        assert ent.requires_grad
        ((logps + 0.3 * ent) * parts[3] * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        rel = float((grads[1][name] - g).norm() / g.norm())
        assert rel < 1e-5, (name, rel)


def test_other_models_take_the_plain_path(model):
    class Wrapper(torch.nn.Module):  # e.g. DDP: its forward must be called
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

    wrapped = Wrapper(model)
    assert forward._plain_parts(wrapped) is None
    parts = batch(True, seed=2)
    ref = run(forward._token_logps_plain, model, parts)
    new = run(forward.token_logps, wrapped, parts)
    m = parts[3].bool()
    torch.testing.assert_close(new[0][m], ref[0][m])


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_model_shares_prompts(model, use_reentrant, monkeypatch):
    """Checkpointed layers drop transformers' cache: the prompt runs once per group without checkpointing and
    the completion pass checkpoints each layer itself (non-reentrant whatever the model was set to), with the
    same numbers as the plain path and the model's checkpointing settings left as they were."""
    replays = []
    real = forward._CHECKPOINT

    def spy(fn, *args, **kw):
        replays.append(1)
        return real(fn, *args, **kw)

    monkeypatch.setattr(forward, "_CHECKPOINT", spy)
    monkeypatch.setitem(forward.TOKENS_PER_CHUNK, "cpu", 64)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    layers = list(model.model.layers)
    funcs = [layer._gradient_checkpointing_func for layer in layers]
    try:
        assert forward._can_share_prompt(model.model)
        parts = batch(True, seed=3)
        ref = run(forward._token_logps_plain, model, parts)
        new = run(forward.token_logps, model, parts)
        assert replays  # the completion layers ran under aha's checkpoint
        assert_same(ref, new, parts[3])
        assert all(layer.gradient_checkpointing for layer in layers)
        assert [layer._gradient_checkpointing_func for layer in layers] == funcs
        assert not any("_can_checkpoint_with_cache" in vars(layer) for layer in layers)
    finally:
        model.activation_checkpointing_disable()
    assert forward._can_share_prompt(model.model)


def saved_bytes(model, parts) -> int:
    """Bytes of the tensors the loss forward saves for the backward (outside any checkpoint)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logps, _ = forward.token_logps(model, *parts, 0.7)
    return total


def test_gradient_checkpointing_still_saves_less(model):
    parts = batch(True, seed=4)
    plain = saved_bytes(model, parts)
    model.activation_checkpointing_enable()
    try:
        ckpt = saved_bytes(model, parts)
    finally:
        model.activation_checkpointing_disable()
    assert ckpt < 0.6 * plain, (ckpt, plain)
