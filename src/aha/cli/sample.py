"""``aha sample``: rejection sampling / distillation: n completions per prompt, verified, kept as SFT data."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from aha.cli import add_dtype_option

NAME = "sample"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="rejection sampling: generate n completions per prompt, keep the verified ones as an SFT dataset",
        description="Generate --n completions per prompt with a model (a teacher for distillation, or the policy "
        "for rejection sampling), verify them with the task's verifier (built-in tasks, GSM8K/MATH files) or "
        "with --reward functions, and write the accepted ones as prompt/completion chat rows to --out, with "
        "the pass rate of every prompt in OUT.pass_rates.jsonl.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="model, run or adapter directory (or a Hub id); with --endpoint, the served model's name",
    )
    p.add_argument(
        "--data", required=True, help="built-in task (arithmetic, arithmetic:digits=3) or a .jsonl/.json/.csv file"
    )
    p.add_argument("--out", required=True, help="output .jsonl (refused if it exists, unless --overwrite)")
    p.add_argument("--n", type=int, default=8, help="completions per prompt (default: 8)")
    p.add_argument("--keep", choices=("correct", "all"), default="correct", help="which completions to keep")
    p.add_argument("--max-per-prompt", type=int, default=None, help="keep at most K completions per prompt")
    p.add_argument("--min-pass-rate", type=float, default=0.0, help="keep prompts with pass rate >= this")
    p.add_argument("--max-pass-rate", type=float, default=1.0, help="keep prompts with pass rate <= this")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="completion length limit (default: 256)")
    p.add_argument("--limit", type=int, default=None, help="number of prompts (default: 100 of a task, a whole file)")
    p.add_argument("--split", default=None, help="the split (default: a task's train split, a Hub data set's test)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="in-process (fast, hf): generation batch size (default: 64)"
    )
    p.add_argument(
        "--reward",
        dest="rewards",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="judge with these rewards (see `aha rewards list`) instead of the verifier",
    )
    p.add_argument("--min-reward", type=float, default=1.0, help="with --reward: accept when the sum is >= this")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a run of the same command that Ctrl-C, SIGTERM or a crash stopped: keep the samples it "
        "accepted and sample the prompts it had not reached (the options must be the same)",
    )
    t = p.add_argument_group("teacher (default: the --model in this process, aha's fast sampler)")
    t.add_argument(
        "--backend",
        choices=("fast", "hf", "vllm"),
        default="fast",
        help="in-process generation: aha's sampler (fast), transformers' generate (hf) or a vLLM engine (vllm, "
        "needs `pip install 'aha[vllm]'`)",
    )
    add_dtype_option(t, extra="; with --backend vllm: the engine's dtype (auto: vLLM's choice)")
    t.add_argument(
        "--vllm-dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="with --backend vllm: the engine's dtype, as --dtype, and also float16 (auto: vLLM's choice, bf16 for "
        "a float32 model on a CPU)",
    )
    t.add_argument(
        "--endpoint",
        metavar="URL",
        default=None,
        help="an OpenAI-compatible API (e.g. `vllm serve` at http://127.0.0.1:8000/v1) serving --model: "
        "nothing is loaded locally but the tokenizer",
    )
    t.add_argument(
        "--tokenizer",
        default=None,
        help="with --endpoint: a local tokenizer whose chat template renders the prompts (sent as token ids to "
        "/completions); default: --model when it is a local directory; without one: /chat/completions",
    )
    t.add_argument(
        "--api-key", default=None, help="with --endpoint: bearer token (default: $OPENAI_API_KEY when it is set)"
    )
    t.add_argument("--concurrency", type=int, default=None, help="with --endpoint: requests in flight (default: 8)")
    t.add_argument(
        "--timeout", type=float, default=None, help="with --endpoint: seconds to wait for an answer (default: 600)"
    )
    t.add_argument(
        "--retries",
        type=int,
        default=None,
        help="with --endpoint: retries of a failed connection or an HTTP 429/5xx answer, with backoff (default: 3)",
    )


ENDPOINT_ONLY = ("tokenizer", "api_key", "concurrency", "timeout", "retries")


def run(args: argparse.Namespace) -> int:
    from aha.console import console
    from aha.rollout.server import EndpointError
    from aha.workflows.sampling import SampleConfig, check_sample_output, run_sample

    cfg = SampleConfig(
        n=args.n,
        keep=args.keep,
        max_per_prompt=args.max_per_prompt,
        min_pass_rate=args.min_pass_rate,
        max_pass_rate=args.max_pass_rate,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        split=args.split,
        seed=args.seed,
        rewards=list(args.rewards),
        min_reward=args.min_reward,
    )
    if args.batch_size is not None:
        cfg.batch_size = args.batch_size
    check_sample_output(args.out, args.overwrite, args.resume, sources=[args.data])  # before loading the model
    if args.endpoint is not None and args.backend != "fast":
        raise ValueError("--endpoint and --backend are exclusive: the endpoint is the teacher")
    given = [f"--{name.replace('_', '-')}" for name in ENDPOINT_ONLY if getattr(args, name) is not None]
    if args.endpoint is None and given:
        raise ValueError(f"{', '.join(given)}: only with --endpoint")
    for flag, value, ok, need in (
        ("--concurrency", args.concurrency, lambda v: v >= 1, "at least 1"),
        ("--timeout", args.timeout, lambda v: v > 0, "> 0 seconds"),
        ("--retries", args.retries, lambda v: v >= 0, ">= 0"),
    ):
        if value is not None and not ok(value):
            raise ValueError(f"{flag} must be {need}, got {value}")
    if args.batch_size is not None and (args.endpoint is not None or args.backend == "vllm"):
        raise ValueError("--batch-size is for in-process sampling (--backend fast or hf): vLLM and servers batch")
    if args.backend != "vllm" and args.vllm_dtype != "auto":
        raise ValueError("--vllm-dtype is for --backend vllm (--dtype sets the dtype of every backend)")
    if args.endpoint is not None and args.dtype != "auto":
        raise ValueError("--dtype: the server at --endpoint loads the model in its own dtype")
    if args.dtype != "auto" and args.vllm_dtype not in ("auto", args.dtype):
        raise ValueError(f"--dtype {args.dtype} and --vllm-dtype {args.vllm_dtype} disagree: pass one of them")
    if args.endpoint is None:
        from aha.workflows.inference import check_dtype, inference_device

        check_dtype(args.dtype, inference_device())  # before loading anything

    engine = None
    try:
        engine = _engine(args, cfg)
        summary = run_sample(engine, args.data, args.out, cfg, overwrite=args.overwrite, resume=args.resume)
    except EndpointError as e:
        print(f"aha sample: error: endpoint {e}", file=sys.stderr)
        return 1
    finally:
        if engine is not None:
            engine.close()
    console.print(
        f"{summary['prompts']} prompts × {cfg.n}: {summary['accepted']} accepted "
        f"(mean pass rate {summary['mean_pass_rate']:.3f}); {summary['prompts_in_range']} prompts in the pass-rate "
        f"range; {summary['kept']} completions kept in {summary['out']} (pass rates: {summary['pass_rates']}); "
        f"{summary['seconds']:.0f} s"
    )
    return 0


def _engine(args: argparse.Namespace, cfg):
    """The engine --endpoint, --backend and --model say: a server, an in-process vLLM engine or the local model."""
    if args.endpoint is not None:
        return _endpoint_engine(args)
    if args.backend == "vllm":
        return _vllm_engine(args)
    from aha.rollout.engine import LocalEngine
    from aha.workflows.inference import load_for_inference

    model, tok = load_for_inference(args.model, args.dtype)
    return LocalEngine(model, tok, backend=args.backend, batch_size=cfg.batch_size)


def _endpoint_engine(args: argparse.Namespace):
    """The --endpoint engine, with the local tokenizer when there is one (--tokenizer, or --model as a directory)."""
    from aha.models.loading import load_tokenizer, resolve_model_path
    from aha.rollout.server import EndpointEngine, OpenAIClient

    source = args.tokenizer
    if source is None and Path(args.model).expanduser().is_dir():
        source = args.model
    tok = None
    if source is not None:
        if not Path(source).expanduser().exists():
            raise FileNotFoundError(f"--tokenizer {source} does not exist")
        tok = load_tokenizer(resolve_model_path(source))
    key = args.api_key if args.api_key is not None else os.environ.get("OPENAI_API_KEY") or None
    options = {"concurrency": args.concurrency, "read_timeout": args.timeout, "retries": args.retries}
    client = OpenAIClient(args.endpoint, api_key=key, **{k: v for k, v in options.items() if v is not None})
    try:
        return EndpointEngine(client, args.model, tok)
    except BaseException:
        client.close()
        raise


def _vllm_engine(args: argparse.Namespace):
    """--backend vllm: a model directory goes to the engine as is; an adapter is merged into its base first."""
    from aha.models.loading import is_adapter, load_model, load_tokenizer, resolve_model_path
    from aha.rollout.vllm import VLLMRollout

    dtype = args.dtype if args.dtype != "auto" else args.vllm_dtype
    path = resolve_model_path(args.model)
    if is_adapter(path):
        model, tok = load_model(path, merge_lora=True)
        return VLLMRollout(model, tok, mode="colocate", seed=args.seed, dtype=dtype)
    return VLLMRollout(path, load_tokenizer(path), mode="colocate", seed=args.seed, dtype=dtype)
