"""The fast decoder under peft LoRA: the adapters merged into its packed weights give the PEFT forward's tokens
(greedy and seeded samples), samples follow the PEFT model's softmax, the merged weights are cached until an
adapter changes, and whatever it cannot merge falls back to the HF forward, saying so."""

import copy
import logging

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from aha.data.prompts import encode_prompts
from aha.rollout import SamplingParams, sample
from aha.rollout import sampler as sampler_mod
from aha.rollout.fast import decoder as fast_mod
from aha.rollout.fast import kernels

PROMPTS = ["12+34", "7+8=15 4+3", "Hello there, how are you?", "a", "What is 47+38?"]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NEVER = [10**6]  # an EOS id no row produces: full-length completions


def _lora(model, seed=5, adapters=("default",), **kw):
    """A LoRA copy of `model` with A and B drawn from `seed` (peft draws A from the global RNG and sets B to zero,
    which would change nothing)."""
    cfg = dict(r=4, lora_alpha=8, target_modules=ALL, lora_dropout=0.0, task_type="CAUSAL_LM") | kw
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**cfg), adapter_name=adapters[0])
    for name in adapters[1:]:
        peft_model.add_adapter(name, LoraConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "lora_B" in name else p.shape[1] ** -0.5))
    return peft_model.eval()


def _hf_forward(model, *args, **kw):
    """sample_fast on the HF forward (the PEFT modules), not the fast decoder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AHA_FAST_DECODE", "0")
        return sampler_mod.sample_fast(model, *args, **kw)


@pytest.fixture(scope="module")
def prompts(tiny):
    return encode_prompts(tiny[1], PROMPTS)  # left-padded to different widths


LORAS = {
    "all-linear": dict(),
    "q,v only": dict(target_modules=["q_proj", "v_proj"]),
    "mlp only, rslora": dict(target_modules=["gate_proj", "up_proj", "down_proj"], use_rslora=True),
}


@pytest.fixture(scope="module", params=sorted(LORAS))
def lora(request, tiny):
    return _lora(tiny[0], **LORAS[request.param])


def test_lora_model_takes_the_fast_decoder(lora, prompts, monkeypatch):
    assert fast_mod.fast_decode_reason(lora, 64) is None
    assert sampler_mod.fast_decode_status(lora, 64) is None
    calls = []
    step = fast_mod.FastDecoder.step
    monkeypatch.setattr(fast_mod.FastDecoder, "step", lambda self, *a: calls.append(1) or step(self, *a))
    sampler_mod.sample_fast(lora, *prompts, SamplingParams(max_new_tokens=6, temperature=0.0), NEVER, 0)
    assert len(calls) == 5


def test_greedy_equals_the_peft_forward_and_generate(lora, tiny, prompts):
    tok = tiny[1]
    p = SamplingParams(max_new_tokens=24, temperature=0.0)
    fast = sampler_mod.sample_fast(lora, *prompts, p, NEVER, tok.pad_token_id)
    assert torch.equal(fast, _hf_forward(lora, *prompts, p, NEVER, tok.pad_token_id))
    assert torch.equal(fast, sample(lora, *prompts, p, NEVER, tok.pad_token_id, backend="hf"))
    # the adapter matters: the base model alone continues otherwise
    assert not torch.equal(fast, sampler_mod.sample_fast(tiny[0], *prompts, p, NEVER, tok.pad_token_id))


def test_seeded_samples_equal_the_peft_forward(lora, tiny, prompts):
    tok = tiny[1]
    p = SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.95, top_k=40)
    kw = dict(row_seeds=[11, 12, 13, 14, 15])
    fast = sampler_mod.sample_fast(lora, *prompts, p, [tok.eos_token_id], tok.pad_token_id, **kw)
    assert torch.equal(fast, _hf_forward(lora, *prompts, p, [tok.eos_token_id], tok.pad_token_id, **kw))


def test_several_active_adapters_are_summed(tiny, prompts):
    model = _lora(tiny[0], adapters=("one", "two"))
    model.base_model.set_adapter(["one", "two"])  # both active: the forward adds both deltas
    assert fast_mod.fast_decode_reason(model, 64) is None
    p = SamplingParams(max_new_tokens=16, temperature=0.0)
    fast = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    assert torch.equal(fast, _hf_forward(model, *prompts, p, NEVER, 0))
    model.base_model.set_adapter("one")
    assert not torch.equal(fast, sampler_mod.sample_fast(model, *prompts, p, NEVER, 0))


def _chi2_ok(counts: torch.Tensor, exact: torch.Tensor) -> None:
    """counts (V,) of n draws against the exact probabilities (V,): nothing outside the support, chi-square within
    five standard deviations of its mean, total variation under twice its expected value (+0.005)."""
    n = float(counts.sum())
    support = exact > 0
    assert counts[~support].sum() == 0
    expected = exact.double() * n
    chi2 = float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())
    df = int(support.sum()) - 1
    assert df >= 4
    assert chi2 < df + 5 * (2 * df) ** 0.5, (chi2, df)
    p = exact.double()[support]
    expected_tv = 0.5 * float(((2 / torch.pi) ** 0.5 * (p * (1 - p) / n).sqrt()).sum())  # E|c/n - p| = √(2p(1-p)/πn)
    tv = 0.5 * float((counts / n - exact.double()).abs().sum())
    assert tv < 2 * expected_tv + 0.005, (tv, expected_tv)


def test_fast_lora_samples_follow_the_peft_softmax(tiny):
    """30000 two-token rollouts of one prompt: the first token (the fast prefill's logits) and the second after the
    commonest first one (a decode step) against the PEFT forward's processed softmax."""
    model, tok = _lora(tiny[0]), tiny[1]
    n = 30_000
    p = SamplingParams(max_new_tokens=2, temperature=0.7, top_k=30)
    ids, mask = encode_prompts(tok, ["47+38=?"])
    assert fast_mod.fast_decode_reason(model, ids.size(1) + 2) is None
    g = torch.Generator().manual_seed(7)
    out = sample(model, ids.expand(n, -1), mask.expand(n, -1), p, NEVER, tok.pad_token_id, generator=g)

    def exact(seq: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1].float()
        return sampler_mod.process_logits(logits, None, p).softmax(-1)[0]

    vocab = model.config.vocab_size
    _chi2_ok(torch.bincount(out[:, 0], minlength=vocab).double(), exact(ids))
    first = int(torch.bincount(out[:, 0]).argmax())
    rows = out[:, 0] == first
    assert int(rows.sum()) > 2000
    second = exact(torch.cat([ids, torch.tensor([[first]])], 1))
    _chi2_ok(torch.bincount(out[rows, 1], minlength=vocab).double(), second)


def test_packed_weights_are_reused_until_the_adapter_changes(tiny, prompts, monkeypatch):
    model = _lora(tiny[0])
    packs = []
    pack = fast_mod._pack
    monkeypatch.setattr(fast_mod, "_pack", lambda *a: packs.append(1) or pack(*a))
    p = SamplingParams(max_new_tokens=12, temperature=0.0)
    first = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    again = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    assert torch.equal(first, again) and len(packs) == 1  # nothing changed: packed once
    # an optimiser step on B in place (the version counter moves): the next call re-merges, tokens follow
    b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    with torch.no_grad():
        b.mul_(-3.0)
    moved = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    assert len(packs) == 2
    assert not torch.equal(moved, first)
    assert torch.equal(moved, _hf_forward(model, *prompts, p, NEVER, 0))


def test_a_fused_optimiser_step_invalidates_the_cache(tiny, prompts):
    """torch's fused AdamW updates in place without bumping the version counter: the bits are checked too."""
    model = _lora(tiny[0])
    p = SamplingParams(max_new_tokens=12, temperature=0.0)
    before = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.5, fused=True)
    versions = [q._version for q in params]
    for q in params:
        q.grad = torch.randn_like(q)
    opt.step()
    assert [q._version for q in params] == versions  # what the bit sum is there for
    after = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    assert torch.equal(after, _hf_forward(model, *prompts, p, NEVER, 0))
    assert not torch.equal(after, before)


def test_lora_settings_are_honoured(tiny, prompts):
    """Disabling the adapters, or changing a layer's scaling, changes no tensor: the merged weights follow."""
    base = tiny[0]
    model = _lora(base)
    p = SamplingParams(max_new_tokens=16, temperature=0.0)
    with_lora = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    with model.disable_adapter():
        assert fast_mod.fast_decode_reason(model, 64) is None
        assert torch.equal(
            sampler_mod.sample_fast(model, *prompts, p, NEVER, 0), _hf_forward(base, *prompts, p, NEVER, 0)
        )
    assert torch.equal(sampler_mod.sample_fast(model, *prompts, p, NEVER, 0), with_lora)
    for m in model.modules():
        if isinstance(m, LoraLayer):
            m.scaling["default"] *= 3.0
    scaled = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    assert not torch.equal(scaled, with_lora)
    assert torch.equal(scaled, _hf_forward(model, *prompts, p, NEVER, 0))


def test_merged_adapters_are_not_added_twice(tiny, prompts):
    model = _lora(tiny[0])
    p = SamplingParams(max_new_tokens=16, temperature=0.0)
    want = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    model.base_model.merge_adapter()
    try:
        assert fast_mod.fast_decode_reason(model, 64) is None
        assert torch.equal(sampler_mod.sample_fast(model, *prompts, p, NEVER, 0), want)
    finally:
        model.base_model.unmerge_adapter()


def test_dropout_in_training_mode_still_matches(tiny, prompts):
    """LoRA dropout is on in training mode: the decoder refuses such a model, but sample() runs it in eval mode,
    where dropout is the identity, so it takes the fast decoder and gives the eval-mode PEFT forward's tokens."""
    model = _lora(tiny[0], lora_dropout=0.5).train()
    assert fast_mod.fast_decode_reason(model, 64) == "LoRA dropout in training mode"
    assert sampler_mod.fast_decode_status(model, 64) is None  # judged as sample() runs it
    assert model.training  # and left as it was
    p = SamplingParams(max_new_tokens=16, temperature=0.9)
    seeds = [1, 2, 3, 4, 5]
    fast = sample(model, *prompts, p, NEVER, 0, row_seeds=seeds)
    assert model.training
    model.eval()
    assert torch.equal(fast, _hf_forward(model, *prompts, p, NEVER, 0, row_seeds=seeds))


def test_other_peft_methods_are_refused(tiny):
    """Prompt tuning prepends virtual tokens in the PeftModel's forward: nothing the decoder could merge."""
    cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    model = get_peft_model(copy.deepcopy(tiny[0]), cfg).eval()
    assert fast_mod.fast_decode_reason(model, 64) == "PEFT adapter 'default' is PROMPT_TUNING, not LoRA"


REFUSED = {
    "DoRA": (lambda m: _lora(m, use_dora=True), "LoRA variant"),
    "lora_bias": (lambda m: _lora(m, lora_bias=True), "lora_bias"),
    "LoRA on lm_head": (lambda m: _lora(m, target_modules=["q_proj", "lm_head"]), "unexpected module layout"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_what_cannot_be_merged_falls_back_and_says_so(kind, tiny, prompts, monkeypatch, caplog):
    make, why = REFUSED[kind]
    model = make(tiny[0])
    reason = fast_mod.fast_decode_reason(model, 64)
    assert reason is not None and why in reason, reason
    assert sampler_mod.fast_decode_status(model, 64) == reason
    monkeypatch.setattr(sampler_mod, "_FALLBACKS_LOGGED", set())
    p = SamplingParams(max_new_tokens=8, temperature=0.0)
    with caplog.at_level(logging.WARNING, logger="aha.rollout"):
        out = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
        again = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    records = [r for r in caplog.records if r.name == "aha.rollout"]
    assert len(records) == 1  # once per (model class, reason)
    assert reason in records[0].getMessage() and type(model).__name__ in records[0].getMessage()
    assert torch.equal(out, again)
    assert torch.equal(out, sampler_mod.sample_hf(model, *prompts, p, NEVER, 0))


def test_fallback_logged_once_per_class_and_reason(tiny, prompts, monkeypatch, caplog):
    model = tiny[0]
    monkeypatch.setattr(sampler_mod, "_FALLBACKS_LOGGED", set())
    p = SamplingParams(max_new_tokens=4, temperature=0.0)
    with caplog.at_level(logging.INFO, logger="aha.rollout"):
        sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)  # the fast decoder: nothing to say
        assert not caplog.records
        monkeypatch.setenv("AHA_FAST_DECODE", "0")
        for _ in range(3):
            sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    assert [r.getMessage() for r in caplog.records] == [
        "aha's fast decoder is off for LlamaForCausalLM (AHA_FAST_DECODE=0): sampling runs the slower HF forward"
    ]
    assert sampler_mod.fast_decode_status(model, 64) == "AHA_FAST_DECODE=0"


def test_native_kernels_and_torch_matmuls_agree_under_lora(tiny, prompts, monkeypatch):
    if kernels.load() is None:
        pytest.skip("no C compiler for the native kernels")
    model = _lora(tiny[0])
    p = SamplingParams(max_new_tokens=16, temperature=0.0)
    native = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    monkeypatch.setenv("AHA_NATIVE_ATTN", "0")
    monkeypatch.setenv("AHA_PACKED_LINEAR", "0")
    assert torch.equal(native, sampler_mod.sample_fast(model, *prompts, p, NEVER, 0))


def test_the_models_own_weights_are_untouched(tiny, prompts):
    model = _lora(tiny[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler_mod.sample_fast(model, *prompts, SamplingParams(max_new_tokens=8, temperature=0.0), NEVER, 0)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
