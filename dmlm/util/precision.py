"""Which number format to compute in: bf16 autocast where the hardware has it, fp32 elsewhere.

Design decisions:
- `auto` means bf16 autocast wherever it is native: CUDA devices that support it, and CPUs whose
  oneDNN build has bf16 kernels (AVX512-BF16 or AMX). There it is the faster format for the same
  steps (measured for the demo model in docs/performance.md, "bf16 autocast in training");
  elsewhere bf16 is emulated and slower than fp32, so `auto` stays in fp32.
- Autocast keeps the weights, the optimizer state and the losses in fp32: only the matrix
  products run in bf16.
"""

from __future__ import annotations

import torch


def native_bf16(device: str = "cpu") -> bool:
    """Whether bf16 autocast runs natively (not emulated) on `device` ("cpu" or "cuda[:N]")."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
