"""The multi-turn loop: a scripted sampler stands in for the model, so every turn, call and result is known."""

from __future__ import annotations

import json

import pytest

from aha.models.tiny import build_tokenizer
from aha.rollout.tool_loop import run_tool_loop, tool_counts, tool_metrics
from aha.tools.calls import tool_suffix_ids
from aha.tools.toolbox import Toolbox, ToolResult


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def broken(x: int) -> int:
    """Always fails.

    Args:
        x: anything
    """
    raise RuntimeError("the tool is broken")


def call_text(name: str, **args) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


class Script:
    """A sampler that answers turn k of row i with script[i][k] (text, EOS appended unless it ends with '…')."""

    def __init__(self, tok, script: list[list[str]]):
        self.tok, self.script, self.calls = tok, script, []

    def __call__(self, prompts, rows, max_new, turn):
        self.calls.append((list(rows), turn, max_new, [list(p) for p in prompts]))
        outs = []
        for i in rows:
            text = self.script[i][min(turn, len(self.script[i]) - 1)]
            ids = self.tok(text.rstrip("…"), add_special_tokens=False)["input_ids"]
            outs.append((ids if text.endswith("…") else ids + [self.tok.eos_token_id])[:max_new])
        return outs, None


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_two_turn_rollout_layout_and_mask(tok):
    eos = tok.eos_token_id
    first, second = call_text("add", a=2, b=3), "<answer>5</answer>"
    gen = Script(tok, [[first, second]])
    prompt = ids(tok, "<|im_start|>user\n2+3<|im_end|>\n<|im_start|>assistant\n")
    out = run_tool_loop(gen, [prompt], [Toolbox([add])], tok, "hermes", [eos], 200)
    suffix = tool_suffix_ids(tok, [ToolResult("add", "5", False)])
    assert tok.decode(suffix) == "\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n"
    t1, t2 = ids(tok, first) + [eos], ids(tok, second) + [eos]
    assert out.completion_ids[0] == t1 + suffix + t2
    assert out.tool_mask[0] == [1] * len(t1) + [0] * len(suffix) + [1] * len(t2)
    # the second turn was sampled from the whole conversation so far
    assert gen.calls[1][3][0] == prompt + t1 + suffix
    assert out.completions[0] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}],
        },
        {"role": "tool", "name": "add", "content": "5"},
        {"role": "assistant", "content": "<answer>5</answer>"},
    ]
    assert (out.calls, out.failures, out.turns, out.ended) == ([1], [0], [2], [True])


def test_rows_that_call_continue_while_the_others_are_done(tok):
    eos = tok.eos_token_id
    script = [["<answer>1</answer>"], [call_text("add", a=1, b=1), "<answer>2</answer>"], ["<answer>3</answer>"]]
    gen = Script(tok, script)
    prompts = [ids(tok, f"q{i}") for i in range(3)]
    out = run_tool_loop(gen, prompts, [Toolbox([add])] * 3, tok, "hermes", [eos], 200)
    assert [c[0] for c in gen.calls] == [[0, 1, 2], [1]]  # turn 1 samples only the row that called
    assert out.turns == [1, 2, 1] and out.calls == [0, 1, 0]
    assert out.tool_mask[0] == [1] * len(out.completion_ids[0])
    m = tool_metrics(tool_counts(out))
    assert m["tools/call_frequency"] == pytest.approx(1 / 3)
    assert m["tools/used"] == pytest.approx(1 / 3)
    assert m["tools/turns"] == pytest.approx(4 / 3)
    masked = len(out.tool_mask[1]) - sum(out.tool_mask[1])
    total = sum(len(c) for c in out.completion_ids)
    assert m["tools/masked_share"] == pytest.approx(masked / total)
    assert m["tools/failure_frequency"] == 0.0


def test_a_tool_that_raises_and_a_malformed_call_reach_the_model_as_errors(tok):
    eos = tok.eos_token_id
    script = [
        [call_text("broken", x=1), "<answer>?</answer>"],
        ["<tool_call>{not json</tool_call>", "<answer>?</answer>"],
        [call_text("nosuch"), "<answer>?</answer>"],
    ]
    gen = Script(tok, script)
    out = run_tool_loop(gen, [ids(tok, "q")] * 3, [Toolbox([add, broken])] * 3, tok, "hermes", [eos], 400)
    tool_msgs = [c[1] for c in out.completions]
    assert "RuntimeError: the tool is broken" in tool_msgs[0]["content"]
    assert "not valid JSON" in tool_msgs[1]["content"]
    assert "nosuch" in tool_msgs[2]["content"] and "add" in tool_msgs[2]["content"]
    assert out.failures == [1, 1, 1] and out.turns == [2, 2, 2]
    for row, mask in zip(out.completion_ids, out.tool_mask):  # the error text is in the masked span the model reads
        masked = tok.decode([t for t, m in zip(row, mask) if not m])
        assert "Error" in masked
    assert tool_metrics(tool_counts(out))["tools/failure_frequency"] == 1.0


def test_max_iterations_bounds_the_rounds(tok):
    eos = tok.eos_token_id
    always = [[call_text("add", a=1, b=2)]]  # the model calls a tool every turn
    for limit, turns in ((0, 1), (1, 2), (3, 4)):
        out = run_tool_loop(Script(tok, always), [ids(tok, "q")], [Toolbox([add])], tok, "hermes", [eos], 2000, limit)
        assert out.turns == [turns] and out.calls == [turns - 1]
    # no limit: the length budget ends it, and no row ever exceeds max_completion_length
    out = run_tool_loop(Script(tok, always), [ids(tok, "q")], [Toolbox([add])], tok, "hermes", [eos], 300, None)
    assert len(out.completion_ids[0]) <= 300 and out.turns[0] >= 2


def test_results_that_do_not_fit_stop_the_row_and_truncation_is_reported(tok):
    eos = tok.eos_token_id
    first = call_text("add", a=2, b=3)
    n_first = len(ids(tok, first)) + 1
    out = run_tool_loop(
        Script(tok, [[first, "<answer>5</answer>"]]),
        [ids(tok, "q")],
        [Toolbox([add])],
        tok,
        "hermes",
        [eos],
        n_first + 5,
    )
    assert out.turns == [1] and out.completion_ids[0] == ids(tok, first) + [eos] and out.ended == [True]
    out = run_tool_loop(Script(tok, [["<answer>12345…"]]), [ids(tok, "q")], [Toolbox([add])], tok, "hermes", [eos], 6)
    assert out.ended == [False] and len(out.completion_ids[0]) == 6


def test_a_call_in_a_turn_cut_by_the_length_is_not_run(tok):
    eos = tok.eos_token_id
    cut = call_text("add", a=2, b=3) + " and more…"  # no EOS: truncated turn, its call is not executed
    out = run_tool_loop(Script(tok, [[cut]]), [ids(tok, "q")], [Toolbox([add])], tok, "hermes", [eos], 400)
    assert out.turns == [1] and out.calls == [0] and out.ended == [False]


def test_sampling_logps_are_zero_for_the_tokens_the_sampler_did_not_draw(tok):
    eos = tok.eos_token_id
    first, second = call_text("add", a=2, b=3), "<answer>5</answer>"
    script = Script(tok, [[first, second]])

    def gen(prompts, rows, max_new, turn):
        outs, _ = script(prompts, rows, max_new, turn)
        return outs, [[-0.5 - turn] * len(o) for o in outs]

    out = run_tool_loop(gen, [ids(tok, "q")], [Toolbox([add])], tok, "hermes", [eos], 400)
    lp = out.sampling_logps[0]
    assert len(lp) == len(out.completion_ids[0])
    assert {x for x, m in zip(lp, out.tool_mask[0]) if not m} == {0.0}
    assert {x for x, m in zip(lp, out.tool_mask[0]) if m} == {-0.5, -1.5}


def test_each_row_uses_its_own_toolbox(tok):
    eos = tok.eos_token_id

    class Counter:
        def __init__(self):
            self.n = 0

        def reset(self, **kw):
            self.n = 0

        def bump(self, k: int) -> int:
            """Add k to the counter.

            Args:
                k: how much
            """
            self.n += k
            return self.n

    envs = [Counter(), Counter()]
    boxes = [Toolbox.from_environment(e) for e in envs]
    script = [[call_text("bump", k=2), "<answer>x</answer>"], [call_text("bump", k=5), "<answer>y</answer>"]]
    out = run_tool_loop(Script(tok, script), [ids(tok, "q")] * 2, boxes, tok, "hermes", [eos], 400)
    assert [e.n for e in envs] == [2, 5]
    assert [c[1]["content"] for c in out.completions] == ["2", "5"]


def test_a_tool_that_hangs_times_out_and_the_model_goes_on(tok):
    import time

    def slow(x: int) -> int:
        """Takes too long.

        Args:
            x: anything
        """
        time.sleep(5)
        return x

    eos = tok.eos_token_id
    script = [[call_text("slow", x=1), "<answer>gave up</answer>"]]
    start = time.perf_counter()
    out = run_tool_loop(Script(tok, script), [ids(tok, "q")], [Toolbox([slow], timeout=0.3)], tok, "hermes", [eos], 400)
    assert time.perf_counter() - start < 3
    assert "timed out" in out.completions[0][1]["content"] and out.failures == [1] and out.turns == [2]
    assert out.completions[0][-1]["content"] == "<answer>gave up</answer>"


def test_a_llama3_template_rollout():
    """The loop on Llama 3.1's own template (as TRL ships it): a JSON call in the whole turn, the result appended as
    the template's ipython turn, masked."""
    from pathlib import Path

    trl = pytest.importorskip("trl")
    path = Path(trl.__file__).parent / "chat_templates" / "llama3_1.jinja"
    if not path.exists():
        pytest.skip("TRL ships no llama3_1 template")
    tok = build_tokenizer()
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|python_tag|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.eos_token = "<|eot_id|>"
    tok.chat_template = path.read_text()
    from aha.tools.calls import detect_format

    fmt = detect_format(tok)
    assert fmt == "llama3"
    eos = tok.eos_token_id
    call = json.dumps({"name": "add", "parameters": {"a": 20, "b": 22}})
    out = run_tool_loop(
        Script(tok, [[call, "The answer is 42."]]), [ids(tok, "q")], [Toolbox([add])], tok, fmt, [eos], 400
    )
    assert out.calls == [1] and out.turns == [2] and out.completions[0][1]["content"] == "42"
    hidden = tok.decode([t for t, m in zip(out.completion_ids[0], out.tool_mask[0]) if not m])
    assert (
        hidden
        == '<|start_header_id|>ipython<|end_header_id|>\n\n"42"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
    )
    assert out.completions[0][-1]["content"] == "The answer is 42."
