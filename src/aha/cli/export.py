"""``aha export``: a run or checkpoint as a self-contained transformers model directory, or as one GGUF file
(``--gguf``) for llama.cpp and Ollama; optionally pushed to the Hub."""

from __future__ import annotations

import argparse

NAME = "export"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="export a run or checkpoint as a self-contained model directory (optionally push it to the Hub)",
        description="Write RUN_OR_CHECKPOINT (a run directory means its model/) to --out as safetensors weights, "
        "config, tokenizer with chat template and a generation config that stops at the right EOS, loadable "
        "with transformers alone. --merge-lora folds a LoRA adapter into its base model. With --gguf TYPE, "
        "--out is one .gguf file instead (Llama-family models; tokenizer and chat template included; an adapter is "
        "merged), for llama.cpp (`llama-cli -m FILE`) or Ollama (`FROM ./FILE` in a Modelfile).",
    )
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="run directory, model directory or adapter directory")
    p.add_argument("--out", required=True, help="output directory (with --gguf: the .gguf file)")
    p.add_argument(
        "--gguf",
        choices=("f32", "f16", "bf16", "q8_0"),
        default=None,
        metavar="TYPE",
        help="write one GGUF file with the matrices in TYPE: f32, f16, bf16 or q8_0 (8-bit)",
    )
    p.add_argument("--merge-lora", action="store_true", help="merge a LoRA adapter into its base weights")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the export to this Hub repository")
    p.add_argument("--overwrite", action="store_true", help="replace an existing exported model in --out")


def run(args: argparse.Namespace) -> int:
    from aha.console import console
    from aha.workflows.export import export_gguf, export_model

    if args.gguf is not None:
        if args.merge_lora:
            raise ValueError("--merge-lora with --gguf: a GGUF export always merges a LoRA adapter; drop --merge-lora")
        out = export_gguf(args.source, args.out, args.gguf, push_to_hub=args.push_to_hub, overwrite=args.overwrite)
        console.print(f"exported to {out}" + (f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""))
        return 0
    out = export_model(
        args.source, args.out, merge_lora=args.merge_lora, push_to_hub=args.push_to_hub, overwrite=args.overwrite
    )
    console.print(f"exported to {out}" + (f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0
