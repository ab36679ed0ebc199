"""open_clip model loading and batched encoding.

`MODEL_NAME` is an open_clip architecture (`ViT-B-32`) or the path of a model config JSON for a custom
architecture. `MODEL_PRETRAINED` is an open_clip pretrained tag (downloaded once into
`$DATA_DIR/models`), a local checkpoint file, or `random`: seeded weights, identical in every process,
for offline demos and tests only. Images arrive as uint8 (HWC arrays from Pillow, CHW tensors already on
the GPU from nvJPEG: see shared/decode.py); conversion to float and normalisation happen on the model's
device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.decode import as_batch, synchronize
from shared.device import resolve_device
from shared.types import RANDOM, ModelInfo, ModelLoadError, StageTimes

if TYPE_CHECKING:
    import torch

    from shared.config import Settings

log = logging.getLogger(__name__)

_RANDOM_SEED = 20261124


class Embedder:
    """A loaded CLIP model. Thread-safe for inference; load once per process with `load_embedder`."""

    def __init__(self, model: Any, tokenizer: Any, info: ModelInfo, device: torch.device) -> None:
        """`model`: an open_clip CLIP (encode_image, encode_text, visual.preprocess_cfg); untyped upstream."""
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        cfg = model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.dtype = next(model.parameters()).dtype
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(cfg["mean"], device=device, dtype=self.dtype).view(shape) * 255
        self._std = torch.tensor(cfg["std"], device=device, dtype=self.dtype).view(shape) * 255

    def encode_images(self, pixels: np.ndarray | Sequence[np.ndarray | torch.Tensor],
                      times: StageTimes | None = None) -> np.ndarray:
        """uint8 images at `image_size` → L2-normalised float32 (N, dim), in one model call.

        `pixels`: an (N, H, W, 3) array, or a list of (H, W, 3) arrays (Pillow) and (3, H, W) tensors
        already on the device (GPU decoding), in any mix. Normalisation happens on the device.
        """
        import torch

        times = times or StageTimes()
        if len(pixels) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        device = str(self.device)
        with torch.inference_mode():
            with times.timing("transfer"):
                if isinstance(pixels, np.ndarray):
                    x = torch.from_numpy(pixels).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
                else:
                    x = as_batch(pixels, device)
                synchronize(device)
            with times.timing("encode"):
                x = ((x.to(self.dtype) - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
                features = _normalised(self.model.encode_image(x))
            return features

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts → L2-normalised float32 (N, dim) in the same space as the images."""
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            return _normalised(self.model.encode_text(tokens))


def _normalised(features: torch.Tensor) -> np.ndarray:
    import torch

    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)


def load_embedder(settings: Settings) -> Embedder:
    """Build the model named by the settings. Raises ModelLoadError with a fix when it cannot."""
    import open_clip
    import torch

    name = settings.model_name
    config_path = Path(name)
    if name.endswith(".json"):
        if not config_path.is_file():
            raise ModelLoadError(f"MODEL_NAME={name!r}: model config file not found")
        open_clip.add_model_config(config_path)
        name = config_path.stem
    if open_clip.get_model_config(name) is None:
        raise ModelLoadError(
            f"MODEL_NAME={name!r} is not an open_clip architecture (e.g. ViT-B-32, ViT-L-14) "
            "nor a model config .json file"
        )
    device = resolve_device(settings.device)
    precision = "fp16" if device.startswith("cuda") else "fp32"
    pretrained = settings.model_pretrained
    kwargs = {"precision": precision, "device": device}
    try:
        if pretrained == RANDOM:
            log.warning(
                "MODEL_PRETRAINED=random: %s has seeded random weights; search results are meaningless "
                "beyond near-duplicates. Use only for offline demos and tests.",
                name,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_RANDOM_SEED)
                model = open_clip.create_model(name, pretrained=None, **kwargs)
        elif _looks_like_path(pretrained):
            if not Path(pretrained).is_file():
                raise ModelLoadError(f"MODEL_PRETRAINED={pretrained!r}: checkpoint file not found")
            model = open_clip.create_model(name, pretrained=pretrained, **kwargs)
        else:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if pretrained not in tags:
                raise ModelLoadError(
                    f"MODEL_PRETRAINED={pretrained!r} is not a pretrained tag of {name} "
                    f"(known: {', '.join(tags) or 'none'}); or give a checkpoint path, or 'random'"
                )
            settings.models_dir.mkdir(parents=True, exist_ok=True)
            model = open_clip.create_model(
                name, pretrained=pretrained, cache_dir=str(settings.models_dir), require_pretrained=True,
                **kwargs,
            )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {name} weights {pretrained!r}: {exc}. Without network access, set "
            "MODEL_PRETRAINED to a local checkpoint file (or 'random' for an offline demo)."
        ) from exc
    model.eval()
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    dim = int(open_clip.get_model_config(name)["embed_dim"])
    info = ModelInfo(name=name, pretrained=pretrained, dim=dim)
    log.info("loaded model %s (dim %d) on %s", info.label(), dim, device)
    return Embedder(model, open_clip.get_tokenizer(name), info, torch.device(device))


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))

