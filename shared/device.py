"""Which device a process runs the model on (`DEVICE=auto|cpu|cuda[:N]`), and what follows from it.

torch is imported only when a question needs it, so settings and the API's light paths stay light.
"""

from __future__ import annotations

from shared.types import ModelLoadError


def resolve_device(requested: str) -> str:
    """`auto` → `cuda` when torch sees a GPU, else `cpu`; an impossible `cuda[:N]` raises ModelLoadError."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"DEVICE={requested} but no CUDA device is visible to torch; use DEVICE=auto or cpu")
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"DEVICE={requested} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return requested


def default_batch_size(requested_device: str) -> int:
    """Images per batch when BATCH_SIZE=0: 256 where the model runs on CUDA, else 32."""
    return 256 if resolve_device(requested_device).startswith("cuda") else 32
