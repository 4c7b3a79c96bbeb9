"""Mixed precision for training: which one a config asks for on a device, and the autocast it runs under.

TRL's ``bf16`` / ``fp16`` fields become accelerate's ``mixed_precision`` ("bf16", "fp16" or "no"). In every mode
the weights and the optimiser state stay fp32 (the master weights); only the forward runs under
``torch.autocast(device, dtype)`` (matmuls in bf16/fp16, reductions such as log-softmax in fp32), and the loss's
log-probs are computed in fp32 from the low-precision logits (``aha.train.forward``). fp16 also scales the loss
with accelerate's gradient scaler.

- ``bf16=None`` (the default): bf16 where a CUDA GPU supports it, else fp32 (a CPU run stays fp32 unless asked);
- ``bf16=True``: on a GPU with bf16, or on a CPU with bf16 instructions (``aha.devices.bf16_supported``); refused
  elsewhere (emulated bf16 is slower than fp32);
- ``fp16=True``: CUDA only (accelerate would silently run fp32 on a CPU); refused with both set.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from aha.devices import bf16_refusal, bf16_supported

PRECISIONS = ("no", "bf16", "fp16")  # accelerate's mixed_precision names
COMPUTE_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(bf16: bool | None, fp16: bool, device: str | torch.device, owner: str) -> str:
    """accelerate's ``mixed_precision`` for a config's ``bf16``/``fp16`` on `device`; a clear error (naming
    ``owner``'s field) where the device cannot run it."""
    device = torch.device(device)
    if bf16 and fp16:
        raise ValueError(f"{owner}: bf16=True and fp16=True both set: choose one (bf16 where the hardware has it)")
    if fp16:
        if device.type != "cuda":
            instead = "bf16=True (this CPU has bf16 instructions)" if bf16_supported("cpu") else "fp32"
            raise ValueError(
                f"{owner}.fp16=True needs a CUDA GPU (fp16 autocast with a gradient scaler), not {device.type}: "
                f"set fp16=False and train in {instead}"
            )
        return "fp16"
    if bf16 is None:
        return "bf16" if device.type == "cuda" and bf16_supported(device) else "no"
    if bf16:
        if not bf16_supported(device):
            raise ValueError(f"{owner}.bf16=True: {bf16_refusal(device)}")
        return "bf16"
    return "no"


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager[Any]:
    """The forward's autocast for `precision` on `device`: what accelerate's ``Accelerator.autocast()`` gives
    (``torch.autocast(device_type, dtype)``), built from the run's own precision rather than accelerate's
    process-wide state (which the next Accelerator made in this process would change); a no-op for "no"."""
    if precision not in PRECISIONS:
        raise ValueError(f"mixed precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=COMPUTE_DTYPES[precision])
