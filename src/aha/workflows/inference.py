"""Loading a model to run it (``aha eval``, ``aha sample``, ``aha chat``): on which device, in which dtype.

The device: the first CUDA GPU when there is one, else the CPU (:func:`inference_device`).

``--dtype`` (:data:`DTYPES`):

* ``auto``: the checkpoint's own dtype where the device computes it natively, else float32 (a bf16 checkpoint on
  a CPU without bf16 instructions, an fp16 one on any CPU: both would run emulated, slower than fp32);
* ``float32``, ``bfloat16``: that dtype; ``bfloat16`` is refused on a device without native bf16
  (:func:`aha.devices.bf16_refusal` says why and what to use instead).

A LoRA adapter is merged into its base (one set of weights, which aha's fast sampler decodes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aha.devices import bf16_refusal, bf16_supported

DTYPES = ("auto", "float32", "bfloat16")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def inference_device() -> torch.device:
    """Where aha runs a model it only samples from: ``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_dtype(dtype: str, device: str | torch.device, flag: str = "--dtype") -> None:
    """One clear error for a `dtype` that is not one of :data:`DTYPES` or that `device` would only emulate."""
    if dtype not in DTYPES:
        raise ValueError(f"{flag} must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "bfloat16" and not bf16_supported(device):
        raise ValueError(f"{flag} bfloat16: {bf16_refusal(device)}")


def native_dtype(dtype: torch.dtype, device: str | torch.device) -> torch.dtype:
    """`dtype` where `device` computes it natively, else float32 (what ``--dtype auto`` does to a checkpoint)."""
    device = torch.device(device)
    if dtype == torch.bfloat16 and not bf16_supported(device):
        return torch.float32
    if dtype == torch.float16 and device.type == "cpu":
        return torch.float32
    return dtype


def load_for_inference(
    path: str | Path, dtype: str = "auto", device: str | torch.device | None = None
) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer) for `path` (model, run or adapter directory, Hub id) in `dtype`
    (see the module doc); `device` None: :func:`inference_device`."""
    from aha.models.loading import is_adapter, load_model, resolve_model_path

    device = inference_device() if device is None else torch.device(device)
    check_dtype(dtype, device)
    resolved = resolve_model_path(path)
    model, tok = load_model(resolved, merge_lora=is_adapter(resolved), dtype=TORCH_DTYPES.get(dtype))
    if dtype == "auto":
        target = native_dtype(model.dtype, device)
        if target != model.dtype:
            model = model.to(target)
    if device.type != "cpu":
        model = model.to(device)
    return model.eval(), tok


def describe(model: Any) -> str:
    """``float32 on cpu``: what a command's header line says about the loaded model."""
    return f"{str(model.dtype).removeprefix('torch.')} on {model.device}"
