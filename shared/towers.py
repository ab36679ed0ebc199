"""The model's two towers as torch modules with one fixed contract, the graph every runtime runs.

- image tower: uint8 pixels (N, 3, S, S) → L2-normalised features (N, dim). Scaling and the model's
  mean/std normalisation happen inside, so a runtime needs nothing but the module (or its ONNX export).
- text tower: token ids (N, context) int64 → L2-normalised features (N, dim).

Imported only where a model is built (it imports torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)


class ImageTower(torch.nn.Module):
    """uint8 NCHW pixels → unit vectors through `encode(float pixels normalised with mean/std)`."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, owner: torch.nn.Module, encode: Callable[[torch.Tensor], torch.Tensor],
                 mean: Sequence[float], std: Sequence[float], dtype: torch.dtype) -> None:
        super().__init__()
        self.owner = owner  # registered so .to()/.eval() and the export see the weights
        self._encode = encode
        shape = (1, 3, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=dtype).view(shape) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=dtype).view(shape) * 255)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.to(self.mean.dtype) - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last)
        return F.normalize(self._encode(x).float(), dim=-1)


class TextTower(torch.nn.Module):
    """Token ids → unit vectors through `encode(tokens)`."""

    def __init__(self, owner: torch.nn.Module, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.owner = owner
        self._encode = encode

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._encode(tokens).float(), dim=-1)


def weights_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype most of a module's weights are in (open_clip's fp16 keeps a few, e.g. embeddings, in fp32)."""
    counts: dict[torch.dtype, int] = {}
    for parameter in module.parameters():
        counts[parameter.dtype] = counts.get(parameter.dtype, 0) + parameter.numel()
    return max(counts, key=lambda dtype: counts[dtype])
