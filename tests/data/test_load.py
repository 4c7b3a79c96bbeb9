import json
import logging
import re

import pytest

from aha.data.load import data_spec, load_rows, resolve_spec, task_of

GSM = [
    {"question": "What is 2+2?", "answer": "2+2 = <<2+2=4>>4\n#### 4"},
    {"question": "What is 1,000+234?", "answer": "1000+234 = <<1000+234=1234>>1234\n#### 1,234"},
    {"question": "Broken row", "answer": "no final answer"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def gsm_file(tmp_path):
    return write_jsonl(tmp_path / "gsm.jsonl", GSM)


def test_jsonl_gsm8k_with_system_prompt(gsm_file, caplog):
    spec = {
        "path": str(gsm_file),
        "prompt_column": "question",
        "answer_column": "answer",
        "answer_format": "gsm8k",
        "system_prompt": "Think first.",
    }
    with caplog.at_level(logging.WARNING, logger="aha.data.load"):
        rows = load_rows(spec)
    assert len(rows) == 2 and [r["answer"] for r in rows] == ["4", "1234"]
    assert rows[0]["prompt"] == [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert rows[1]["question"] == "What is 1,000+234?"  # original columns are kept
    assert "dropped 1 rows" in caplog.text


def test_plain_prompt_and_raw_answer(gsm_file):
    rows = load_rows({"path": str(gsm_file), "prompt_column": "question", "answer_column": "answer"})
    assert len(rows) == 3 and rows[0]["prompt"] == "What is 2+2?" and rows[2]["answer"] == "no final answer"
    rows = load_rows({"path": str(gsm_file), "prompt_column": "question"})
    assert rows[0]["answer"] == GSM[0]["answer"]  # no answer_column: columns untouched


def test_math_boxed(tmp_path):
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {"problem": "half?", "solution": r"It is $\boxed{\frac{1}{2}}$."},
            {"problem": "p", "solution": r"\boxed{3}"},
            {"problem": "free", "solution": r"\frac{2}{3}"},  # no \boxed: the answer as written
            {"problem": "cut", "solution": r"so \boxed{\frac{1}{2}"},  # unbalanced: dropped
        ],
    )
    rows = load_rows(
        {"path": str(path), "prompt_column": "problem", "answer_column": "solution", "answer_format": "math"}
    )
    assert [r["answer"] for r in rows] == [r"\frac{1}{2}", "3", r"\frac{2}{3}"]
    assert rows[0]["solution"] == r"It is $\boxed{\frac{1}{2}}$."


def test_gsm8k_plain_numbers_are_answers(tmp_path):
    path = write_jsonl(
        tmp_path / "n.jsonl", [{"q": "a", "a": "1,000"}, {"q": "b", "a": "#### 7"}, {"q": "c", "a": "x"}]
    )
    rows = load_rows({"path": str(path), "prompt_column": "q", "answer_column": "a", "answer_format": "gsm8k"})
    assert [r["answer"] for r in rows] == ["1000", "7"]


AUTO = {"prompt_column": "auto", "answer_column": "auto", "answer_format": "auto"}


def test_auto_detects_columns_and_format(gsm_file, tmp_path):
    rows = load_rows({"path": str(gsm_file), **AUTO})
    assert [r["answer"] for r in rows] == ["4", "1234"]  # gsm8k detected; the row with no #### is dropped
    assert rows[0]["prompt"] == "What is 2+2?"
    assert resolve_spec({"path": str(gsm_file), **AUTO}) == {
        "path": str(gsm_file),
        "prompt_column": "question",
        "answer_column": "answer",
        "answer_format": "gsm8k",
    }
    # the first of PROMPT_COLUMNS / ANSWER_COLUMNS present wins: "prompt" before "input", "answer" before "solution"
    both = write_jsonl(tmp_path / "b.jsonl", [{"input": "i", "prompt": "p", "solution": r"\boxed{2}", "answer": "x"}])
    resolved = resolve_spec({"path": both, **AUTO})
    assert (resolved["prompt_column"], resolved["answer_column"], resolved["answer_format"]) == (
        "prompt",
        "answer",
        "math",
    )
    spec = {"task": "arithmetic", "n": 3}
    assert resolve_spec(spec) is spec  # nothing to detect
    with pytest.raises(ValueError, match=r"no prompt column in .*b2.jsonl.*or set prompt_column\); its columns: text"):
        load_rows({"path": write_jsonl(tmp_path / "b2.jsonl", [{"text": "t"}]), **AUTO})
    with pytest.raises(ValueError, match="answer_format must be one of gsm8k, math, auto or null"):
        load_rows({"path": str(gsm_file), **AUTO, "answer_format": "latex"})


def test_data_spec_strings(tmp_path):
    assert data_spec("arithmetic") == {"task": "arithmetic", "split": "eval", "n": 100, "seed": 0}
    assert data_spec("arithmetic:digits=3,guess_fraction=0.5", limit=7, seed=2, task_split="train") == {
        "task": "arithmetic",
        "digits": 3,
        "guess_fraction": 0.5,
        "split": "train",
        "n": 7,
        "seed": 2,
    }
    assert data_spec("countdown", split="sft")["split"] == "sft"
    local = str(tmp_path / "gsm.jsonl")
    assert data_spec(local, limit=5) == {"path": local, **AUTO, "max_samples": 5}
    assert data_spec("openai/gsm8k:main") == {"path": "openai/gsm8k", "name": "main", "split": "test", **AUTO}
    assert data_spec("HuggingFaceH4/MATH-500", split="train")["split"] == "train"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("arithmetc", "not a built-in task (did you mean arithmetic?)"),
        ("arithmetic:digits", "task parameters are key=value pairs, got 'digits'"),
        ("arithmetic:n=3", "'n' is not a parameter of task 'arithmetic'"),
        ("/owner", "no such file or directory"),
        ("", "expected a task name, a data file or a Hub id"),
    ],
)
def test_data_spec_errors(text, message):
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        load_rows(data_spec(text))


def test_data_spec_limit_and_task_params():
    with pytest.raises(ValueError, match="limit must be an integer >= 1"):
        data_spec("arithmetic", limit=0)
    with pytest.raises(ValueError, match="digits"):
        load_rows(data_spec("arithmetic:digits=0"))
    assert task_of({"task": "arithmetic", "digits": 3, "n": 5, "split": "eval"}).digits == 3
    assert task_of({"task": "countdown", "params": {"count": 3}}).count == 3


def test_other_formats_and_directory(tmp_path):
    from datasets import Dataset

    (tmp_path / "a.json").write_text(json.dumps([{"prompt": "p1"}, {"prompt": "p2"}]))
    assert [r["prompt"] for r in load_rows({"path": str(tmp_path / "a.json")})] == ["p1", "p2"]
    (tmp_path / "c.csv").write_text("q,a\nhello,1\nworld,2\n")
    rows = load_rows({"path": str(tmp_path / "c.csv"), "prompt_column": "q", "answer_column": "a"})
    assert [(r["prompt"], r["answer"]) for r in rows] == [("hello", "1"), ("world", "2")]
    Dataset.from_list([{"prompt": "x", "answer": 7}]).to_parquet(str(tmp_path / "d.parquet"))
    assert load_rows({"path": str(tmp_path / "d.parquet"), "answer_column": "answer"})[0]["answer"] == "7"
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "part-0.jsonl", [{"prompt": "a"}])
    write_jsonl(shards / "part-1.jsonl", [{"prompt": "b"}, {"prompt": "c"}])
    assert sorted(r["prompt"] for r in load_rows({"path": str(shards), "split": "test"})) == ["a", "b", "c"]
    (shards / "extra.csv").write_text("prompt\nd\n")
    with pytest.raises(ValueError, match="mixes formats"):
        load_rows({"path": str(shards)})


def test_conversational_prompt_column(tmp_path):
    conv = [{"role": "user", "content": "hi"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": conv}])
    assert load_rows({"path": str(path)})[0]["prompt"] == conv
    rows = load_rows({"path": str(path), "system_prompt": "S"})
    assert rows[0]["prompt"] == [{"role": "system", "content": "S"}, *conv]
    sys_path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": [{"role": "system", "content": "X"}, *conv]}])
    with pytest.raises(ValueError, match="already start with a system message"):
        load_rows({"path": str(sys_path), "system_prompt": "S"})


def test_max_samples_and_shuffle(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": f"p{i}"} for i in range(20)])
    assert [r["prompt"] for r in load_rows({"path": str(path), "max_samples": 3})] == ["p0", "p1", "p2"]
    a = load_rows({"path": str(path), "shuffle_seed": 1, "max_samples": 5})
    assert a == load_rows({"path": str(path), "shuffle_seed": 1, "max_samples": 5})
    assert [r["prompt"] for r in a] != ["p0", "p1", "p2", "p3", "p4"]
    assert sorted(r["prompt"] for r in load_rows({"path": str(path), "shuffle_seed": 1})) == sorted(
        f"p{i}" for i in range(20)
    )


def test_max_prompt_length_filters_never_truncates(tmp_path, caplog):
    from aha.models.tiny import build_tokenizer

    tok = build_tokenizer()  # one token per character
    path = write_jsonl(tmp_path / "l.jsonl", [{"prompt": "aaaa"}, {"prompt": "a" * 10}, {"prompt": "aaaaa"}])
    with caplog.at_level(logging.WARNING, logger="aha.data.load"):
        rows = load_rows({"path": str(path), "max_prompt_length": 5}, tokenizer=tok)
    assert [r["prompt"] for r in rows] == ["aaaa", "aaaaa"]
    assert "dropped 1 rows" in caplog.text and "max_prompt_length=5" in caplog.text
    with pytest.raises(ValueError, match="no rows left.*too long"):
        load_rows({"path": str(path), "max_prompt_length": 3}, tokenizer=tok)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_rows({"path": str(path), "max_prompt_length": 5})
    # chat prompts are measured with the chat template
    conv = load_rows({"task": "arithmetic", "n": 5, "system_prompt": "S", "max_prompt_length": 1000}, tokenizer=tok)
    assert len(conv) == 5
    with pytest.raises(ValueError, match="no rows left"):
        load_rows({"task": "arithmetic", "n": 5, "max_prompt_length": 10}, tokenizer=tok)


def test_tasks():
    rows = load_rows({"task": "countdown", "count": 3, "n": 7, "split": "eval", "seed": 2})
    assert len(rows) == 7 and all(len(r["numbers"]) == 3 for r in rows)
    from aha.tasks import get_task

    assert rows == get_task("countdown", count=3).rows("eval", 7, 2)
    assert load_rows({"task": "wordproblems", "params": {"max_steps": 1}, "n": 3})[0]["solution"].count("\n") == 1
    sys_rows = load_rows({"task": "summarize", "n": 2, "system_prompt": "Be short.", "max_samples": 1})
    assert len(sys_rows) == 1 and sys_rows[0]["prompt"][0] == {"role": "system", "content": "Be short."}
    with pytest.raises(ValueError, match="did you mean countdown"):
        load_rows({"task": "countdwn"})
    with pytest.raises(ValueError, match="colour"):
        load_rows({"task": "countdown", "colour": "red"})
    with pytest.raises(ValueError, match="count"):
        load_rows({"task": "countdown", "count": 99})
    with pytest.raises(ValueError, match="given twice"):
        load_rows({"task": "countdown", "count": 3, "params": {"count": 4}})
    with pytest.raises(ValueError, match="n must be"):
        load_rows({"task": "countdown", "n": 0})


def test_errors_name_the_culprit(tmp_path, gsm_file):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_rows({"path": str(tmp_path / "missing.jsonl")})
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_rows({"path": "data/missing.jsonl"})
    with pytest.raises(ValueError, match=r"prompt_column 'prompt' not found .*columns: question, answer"):
        load_rows({"path": str(gsm_file)})
    with pytest.raises(ValueError, match=r"answer_column 'solution' not found .*columns: question, answer"):
        load_rows({"path": str(gsm_file), "prompt_column": "question", "answer_column": "solution"})
    with pytest.raises(ValueError, match="answer_format must be one of gsm8k, math"):
        load_rows({"path": str(gsm_file), "prompt_column": "question", "answer_column": "answer", "answer_format": "x"})
    with pytest.raises(ValueError, match="needs answer_column"):
        load_rows({"path": str(gsm_file), "prompt_column": "question", "answer_format": "gsm8k"})
    with pytest.raises(ValueError, match="unknown key.*promt_column"):
        load_rows({"path": str(gsm_file), "promt_column": "question"})
    with pytest.raises(ValueError, match="exactly one of"):
        load_rows({"path": str(gsm_file), "task": "countdown"})
    with pytest.raises(ValueError, match="exactly one of"):
        load_rows({})
    with pytest.raises(ValueError, match="max_samples"):
        load_rows({"path": str(gsm_file), "max_samples": 0})
    (tmp_path / "empty.csv").write_text("prompt\n")
    with pytest.raises(ValueError, match="empty"):
        load_rows({"path": str(tmp_path / "empty.csv")})
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        load_rows({"path": str(tmp_path / "notes.txt")})
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl"):
        load_rows({"path": str(tmp_path / "bad.jsonl")})
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_rows({"path": str(empty_dir)})
    only_bad = write_jsonl(tmp_path / "nb.jsonl", [{"q": "x", "a": "no marker"}])
    with pytest.raises(ValueError, match="no rows left.*no answer found"):
        load_rows({"path": str(only_bad), "prompt_column": "q", "answer_column": "a", "answer_format": "gsm8k"})


def test_hub_ids_go_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        if path == "nobody/nothing":
            raise datasets.exceptions.DatasetNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")
        return datasets.Dataset.from_list([{"question": "q", "answer": "r\n#### 5"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = {"path": "openai/gsm8k", "name": "main", "split": "test", "prompt_column": "question"}
    rows = load_rows({**spec, "answer_column": "answer", "answer_format": "gsm8k"})
    assert rows[0]["answer"] == "5" and calls == [("openai/gsm8k", "main", "test", {})]
    rows = load_rows(data_spec("openai/gsm8k:main"))  # a --data string: test split, columns detected
    assert rows[0]["answer"] == "5" and rows[0]["prompt"] == "q" and calls[-1][:3] == ("openai/gsm8k", "main", "test")
    with pytest.raises(ValueError, match="nobody/nothing"):
        load_rows({"path": "nobody/nothing"})


def test_few_shot_turns_go_before_the_question_after_the_system_prompt(tmp_path):
    shot = [{"user": "12+7", "assistant": "<think>12 plus 7 is 19.</think><answer>19</answer>"}]
    rows = load_rows({"task": "arithmetic", "n": 2, "instruction": False, "system_prompt": "S", "few_shot": shot})
    roles = [m["role"] for m in rows[0]["prompt"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert rows[0]["prompt"][1]["content"] == "12+7" and "+" in rows[0]["prompt"][-1]["content"]
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "2+2", "answer": "4"}\n')
    (row,) = load_rows({"path": str(f), "few_shot": shot})
    assert row["prompt"] == [
        {"role": "user", "content": "12+7"},
        {"role": "assistant", "content": shot[0]["assistant"]},
        {"role": "user", "content": "2+2"},
    ]
    assert load_rows({"path": str(f)})[0]["prompt"] == "2+2"  # unchanged without few_shot


def test_a_few_shot_exchange_with_a_tool_call():
    exchange = [
        {"role": "user", "content": "12*34"},
        {
            "role": "assistant",
            "content": '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>',
        },
        {"role": "tool", "name": "calculator", "content": "408"},
        {"role": "assistant", "content": "<answer>408</answer>"},
    ]
    shot = [{"messages": exchange}, {"user": "2+2", "assistant": "<answer>4</answer>"}]
    (row,) = load_rows({"task": "arithmetic", "n": 1, "instruction": False, "few_shot": shot})
    assert row["prompt"][:4] == exchange and [m["role"] for m in row["prompt"][4:]] == ["user", "assistant", "user"]


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "non-empty list"),
        ("12+7", "non-empty list"),
        ([{"user": "q"}], r"few_shot\[0\] must have exactly the keys user and assistant"),
        ([{"user": "q", "assistant": " "}], r"few_shot\[0\]\.assistant must be a non-empty string"),
        ([{"messages": [{"role": "tool", "content": "5"}]}], r"few_shot\[0\]\.messages must start with a user"),
        ([{"messages": [{"role": "robot", "content": "x"}]}], r"few_shot\[0\]\.messages\[0\] must be \{role"),
        ([{"messages": [{"role": "user", "content": "x", "id": 1}]}], r"messages\[0\]: unknown keys \['id'\]"),
    ],
)
def test_bad_few_shot_is_refused_naming_the_example(bad, match):
    with pytest.raises(ValueError, match=match):
        load_rows({"task": "arithmetic", "n": 2, "few_shot": bad})


@pytest.mark.parametrize(
    ("name", "text", "line", "what"),
    [
        ("rows.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "c",}\n{"prompt": "d"}\n', 4, "not valid JSON"),
        ("rows.jsonl", '{"prompt": "a"}\n[1, 2]\n', 2, "a row must be a JSON object"),
        ("rows.json", '[\n  {"prompt": "a"},\n  {"prompt": "b"\n]\n', 4, "not valid JSON"),
    ],
)
def test_a_bad_json_line_is_named_by_file_and_line(tmp_path, name, text, line, what):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        load_rows({"path": str(path)})
    assert str(e.value).startswith(f"{path}: line {line}: {what}"), str(e.value)
