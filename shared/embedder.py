"""open_clip model loading and batched encoding.

`MODEL_NAME` is an open_clip architecture (`ViT-B-32`) or the path of a model config JSON for a custom
architecture. `MODEL_PRETRAINED` is an open_clip pretrained tag (downloaded once into
`$DATA_DIR/models`), a local checkpoint file, or `random`: seeded weights, identical in every process,
for offline demos and tests only. Images arrive as uint8 (HWC arrays from Pillow, CHW tensors already on
the GPU from nvJPEG: see shared/decode.py); conversion to float and normalisation happen inside the
model's graph (shared/towers.py), which torch, OpenVINO or ONNX Runtime runs (shared/runtime.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.device import resolve_device
from shared.export import cache_folder, cached, export_towers
from shared.runtime import (
    CPU_ONLY,
    TorchTowers,
    Towers,
    choose_precision,
    choose_runtime,
    cpu_budget,
    load_towers,
    runtime_version,
)
from shared.types import RANDOM, ModelInfo, ModelLoadError, StageTimes

if TYPE_CHECKING:
    import torch

    from shared.config import Settings

log = logging.getLogger(__name__)

_RANDOM_SEED = 20261124


class Embedder:
    """A loaded model. Thread-safe for inference; load once per process with `load_embedder`."""

    def __init__(self, towers: Towers, tokenizer: Any, info: ModelInfo, image_size: int, device: str) -> None:
        self.towers = towers
        self.tokenizer = tokenizer
        self.info = info
        self.image_size = image_size
        self.device = device  # where the pixels go: "cpu", or the CUDA device torch runs on
        self.runtime = towers.runtime
        self.precision = towers.precision

    def describe(self) -> str:
        """E.g. `ViT-B-32/laion2b_s34b_b79k on cpu with openvino (bf16, 2 threads)`."""
        threads = f", {self.towers.threads} threads" if not self.device.startswith("cuda") else ""
        return f"{self.info.label()} on {self.device} with {self.runtime} ({self.precision}{threads})"

    def encode_images(self, pixels: np.ndarray | Sequence[np.ndarray | torch.Tensor],
                      times: StageTimes | None = None) -> np.ndarray:
        """uint8 images at `image_size` → L2-normalised float32 (N, dim), in one model call.

        `pixels`: an (N, H, W, 3) array, or a list of (H, W, 3) arrays (Pillow) and (3, H, W) tensors
        already on the device (GPU decoding), in any mix. Normalisation happens inside the model graph.
        """
        times = times or StageTimes()
        if len(pixels) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        with times.timing("transfer"):
            batch = self.towers.batch(list(pixels))
        with times.timing("encode"):
            return _unit(self.towers.images(batch))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts → L2-normalised float32 (N, dim) in the same space as the images."""
        return _unit(self.towers.texts(self.tokenizer(texts)))


def _unit(features: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 in float32 (again after the graph: bf16 leaves them a hair off)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def load_embedder(settings: Settings) -> Embedder:
    """Build the model named by the settings. Raises ModelLoadError with a fix when it cannot."""
    import open_clip
    import torch

    from shared.towers import ImageTower, TextTower

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
    device = _device(settings)
    runtime = choose_runtime(settings.embed_runtime, device)
    precision = choose_precision(settings.embed_precision, runtime, device)
    threads = settings.embed_threads or cpu_budget()
    pretrained = settings.model_pretrained
    _check_weights(name, pretrained)
    config = open_clip.get_model_config(name)
    size = _image_size(config)
    info = ModelInfo(name=name, pretrained=pretrained, dim=int(config["embed_dim"]),
                     precision="int8" if precision == "int8" else "")
    tokenizer = open_clip.get_tokenizer(name)

    def torch_towers() -> tuple[ImageTower, TextTower]:
        model = _create_model(name, pretrained, settings, device=device,
                              precision=precision if runtime == "torch" and precision in ("fp16", "bf16") else "fp32")
        model.eval()
        if device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last)
        cfg = model.visual.preprocess_cfg
        dtype = weights_dtype(model.visual)
        return ImageTower(model, model.encode_image, cfg["mean"], cfg["std"], dtype).to(device), \
            TextTower(model, model.encode_text)

    towers: Towers
    if runtime == "torch":
        if not device.startswith("cuda"):
            torch.set_num_threads(threads)
        towers = TorchTowers(*torch_towers(), device, precision, threads)
    else:  # exported once (the torch model is built only then), loaded from the cache on later starts
        key = {"model": info.label(), "weights": _weights_stamp(pretrained), "config": _config_stamp(config_path),
               "runtime": runtime, "runtime_version": runtime_version(runtime), "torch": torch.__version__,
               "open_clip": open_clip.__version__, "image_size": size, "int8": precision == "int8"}
        towers = cached(
            cache_folder(settings.models_dir, info.label(), runtime), key,
            build=lambda folder: export_towers(folder, runtime, precision, *torch_towers(), size,
                                               tokenizer(["a photo of a cat", "a red car on a street"])),
            load=lambda folder: load_towers(folder, runtime, precision, threads),
        )
    embedder = Embedder(towers, tokenizer, info, size, device)
    log.info("loaded model %s (dim %d)", embedder.describe(), info.dim)
    return embedder


def weights_dtype(module: Any) -> torch.dtype:
    """The dtype most of a module's weights are in (open_clip's fp16 keeps a few, e.g. embeddings, in fp32)."""
    counts: dict[Any, int] = {}
    for parameter in module.parameters():
        counts[parameter.dtype] = counts.get(parameter.dtype, 0) + parameter.numel()
    return max(counts, key=lambda dtype: counts[dtype])


def _image_size(config: dict[str, Any]) -> int:
    """The square input side the architecture expects (its vision config's image_size)."""
    size = config.get("vision_cfg", {}).get("image_size", 224)
    return int(size if isinstance(size, int) else size[0])


def _check_weights(name: str, pretrained: str) -> None:
    """MODEL_PRETRAINED names weights that can exist: `random`, a checkpoint file, a tag of this architecture."""
    import open_clip

    if pretrained == RANDOM:
        return
    if _looks_like_path(pretrained):
        if not Path(pretrained).is_file():
            raise ModelLoadError(f"MODEL_PRETRAINED={pretrained!r}: checkpoint file not found")
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ModelLoadError(
            f"MODEL_PRETRAINED={pretrained!r} is not a pretrained tag of {name} "
            f"(known: {', '.join(tags) or 'none'}); or give a checkpoint path, or 'random'"
        )


def _device(settings: Settings) -> str:
    """DEVICE resolved; `auto` means the CPU when EMBED_RUNTIME names a CPU runtime."""
    if settings.device == "auto" and settings.embed_runtime in CPU_ONLY:
        return "cpu"
    return resolve_device(settings.device)


def _create_model(name: str, pretrained: str, settings: Settings, *, device: str, precision: str) -> Any:
    """open_clip's model with the weights MODEL_PRETRAINED names (checked by `_check_weights` first);
    ModelLoadError with a fix when they cannot be loaded."""
    import open_clip
    import torch

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
                return open_clip.create_model(name, pretrained=None, **kwargs)
        if _looks_like_path(pretrained):
            return open_clip.create_model(name, pretrained=pretrained, **kwargs)
        settings.models_dir.mkdir(parents=True, exist_ok=True)
        return open_clip.create_model(
            name, pretrained=pretrained, cache_dir=str(settings.models_dir), require_pretrained=True, **kwargs,
        )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {name} weights {pretrained!r}: {exc}. Without network access, set "
            "MODEL_PRETRAINED to a local checkpoint file (or 'random' for an offline demo)."
        ) from exc


def _weights_stamp(pretrained: str) -> str:
    """A checkpoint file's path, size and modification time (a replaced file makes the export stale)."""
    if not _looks_like_path(pretrained):
        return pretrained
    stat = Path(pretrained).stat()
    return f"{Path(pretrained).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _config_stamp(config_path: Path) -> str:
    """The SHA-256 of a custom model config .json (empty for open_clip's own architectures)."""
    if config_path.suffix != ".json" or not config_path.is_file():
        return ""
    return hashlib.sha256(config_path.read_bytes()).hexdigest()


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))

