"""The loaded model: an extractor's towers, run by the chosen runtime, and batched encoding.

`load_embedder(settings)` asks the extractor `EXTRACTOR` names (shared/extractors/) for the model, picks the
runtime, precision and threads (shared/runtime.py), and either builds the torch towers (torch) or loads them
exported and cached (OpenVINO, ONNX Runtime; shared/export.py: the torch model is then built only when the
cache is missing or stale). Images arrive as uint8 (HWC arrays from Pillow, CHW tensors already on the GPU
from nvJPEG: see shared/decode.py); conversion to float and normalisation happen inside the towers' graph
(shared/towers.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.device import resolve_device
from shared.export import cache_folder, cached, export_towers
from shared.extractors import extractor_from_settings
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
from shared.types import ModelInfo, NotSupported, StageTimes

if TYPE_CHECKING:
    import torch

    from shared.config import Settings

log = logging.getLogger(__name__)


class Embedder:
    """A loaded model. Thread-safe for inference; load once per process with `load_embedder`."""

    def __init__(self, towers: Towers, tokenizer: Any, info: ModelInfo, image_size: int, device: str) -> None:
        self.towers = towers
        self.tokenizer = tokenizer  # None: an image-only extractor
        self.info = info
        self.image_size = image_size
        self.device = device  # where the pixels go: "cpu", or the CUDA device torch runs on
        self.runtime = towers.runtime
        self.precision = towers.precision
        self.has_text = towers.has_text

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
        """Texts → L2-normalised float32 (N, dim) in the same space as the images; NotSupported when the
        extractor has no text tower."""
        if not self.has_text:
            raise NotSupported(
                f"text search needs a CLIP model (EXTRACTOR=open_clip); this index was built with "
                f"{self.info.label()}, an image-only extractor: search with an image instead"
            )
        return _unit(self.towers.texts(self.tokenizer(texts)))


def _unit(features: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 in float32 (again after the graph: bf16 leaves them a hair off)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def load_embedder(settings: Settings) -> Embedder:
    """Build the model the settings name. Raises ModelLoadError with a fix when it cannot."""
    import torch

    extractor = extractor_from_settings(settings)
    info = extractor.info
    device = _device(settings)
    runtime = choose_runtime(settings.embed_runtime, device)
    precision = choose_precision(settings.embed_precision, runtime, device, cpu_bf16=extractor.cpu_bf16)
    threads = settings.embed_threads or cpu_budget()
    if precision == "int8":
        info = replace(info, precision="int8")
    size = extractor.image_size
    tokenizer = extractor.tokenizer

    def torch_towers() -> tuple[torch.nn.Module, torch.nn.Module | None]:
        return extractor.towers(device, precision if runtime == "torch" and precision in ("fp16", "bf16") else "fp32")

    towers: Towers
    if runtime == "torch":
        if not device.startswith("cuda"):
            torch.set_num_threads(threads)
        towers = TorchTowers(*torch_towers(), device, precision, threads)
    else:  # exported once (the torch model is built only then), loaded from the cache on later starts
        key = {"model": info.label(), **extractor.cache_key(), "runtime": runtime,
               "runtime_version": runtime_version(runtime), "torch": torch.__version__, "image_size": size,
               "int8": precision == "int8"}
        sample = tokenizer(["a photo of a cat", "a red car on a street"]) if tokenizer is not None else None
        towers = cached(
            cache_folder(settings.models_dir, info.label(), runtime), key,
            build=lambda folder: export_towers(folder, runtime, precision, *torch_towers(), size, sample),
            load=lambda folder: load_towers(folder, runtime, precision, threads, text=tokenizer is not None),
        )
    embedder = Embedder(towers, tokenizer, info, size, device)
    log.info("loaded model %s (dim %d%s)", embedder.describe(), info.dim, "" if embedder.has_text else ", image only")
    return embedder


def settings_for(settings: Settings, model: ModelInfo) -> Settings:
    """`settings` with the model replaced by `model` (another identity of the catalogue, shared/catalog.py)."""
    if model.precision == "int8":
        precision = "int8"
    else:
        precision = "auto" if settings.embed_precision == "int8" else settings.embed_precision
    return settings.model_copy(update={"extractor": model.extractor, "model_name": model.config or model.name,
                                       "model_pretrained": model.pretrained, "embed_precision": precision})


def identify(settings: Settings) -> ModelInfo:
    """The identity of the model the settings name, with its dimension, without loading any weights
    (ModelLoadError with a fix when it cannot be had)."""
    info = extractor_from_settings(settings).info
    return replace(info, precision="int8") if settings.embed_precision == "int8" else info


def load_model(settings: Settings, model: ModelInfo) -> Embedder:
    """Load the model of identity `model` with this process's device and runtime settings."""
    return load_embedder(settings_for(settings, model))


def _device(settings: Settings) -> str:
    """DEVICE resolved; `auto` means the CPU when EMBED_RUNTIME names a CPU runtime."""
    if settings.device == "auto" and settings.embed_runtime in CPU_ONLY:
        return "cpu"
    return resolve_device(settings.device)
