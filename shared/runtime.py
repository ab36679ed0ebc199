"""What runs the model's towers: torch (CPU or CUDA), OpenVINO or ONNX Runtime (CPU).

`EMBED_RUNTIME=auto` picks torch on CUDA, OpenVINO on a CPU when it is installed, else torch. The model is
always defined and loaded in torch by its extractor (shared/extractors/); OpenVINO and ONNX Runtime run its towers
(shared/towers.py) exported to ONNX once and cached (shared/export.py). Every runtime gives the same
vectors within a cosine of 0.999, so an index built with one is searched with another; the model identity
stored with an index names the model, not the runtime (only `EMBED_PRECISION=int8`, which changes vectors
more, is part of it).

Precision (`EMBED_PRECISION=auto|f32|bf16|int8`): auto is fp16 on CUDA, bf16 with OpenVINO on a CPU that
has native bf16 (OpenVINO's own default there) when the extractor allows it (CLIP: yes; EfficientNet-Lite,
whose vectors drift to a cosine of ~0.996 in bf16: no), else f32. Threads (`EMBED_THREADS`, 0: the CPUs this
process may use) bound the model on a CPU, so the decode pool and the model do not fight over cores.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from shared.types import ModelLoadError

if TYPE_CHECKING:
    import torch

RUNTIMES = ("torch", "openvino", "onnxruntime")
CPU_ONLY = ("openvino", "onnxruntime")


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(runtime) is not None


def choose_runtime(requested: str, device: str) -> str:
    """EMBED_RUNTIME → the runtime used on `device` (already resolved); ModelLoadError when impossible."""
    if requested == "auto":
        if device.startswith("cuda"):
            return "torch"
        return "openvino" if installed("openvino") else "torch"
    if requested in CPU_ONLY:
        if device.startswith("cuda"):
            raise ModelLoadError(
                f"EMBED_RUNTIME={requested} runs on the CPU, but DEVICE={device}: use EMBED_RUNTIME=torch "
                "(or auto) on a GPU, or DEVICE=cpu"
            )
        if not installed(requested):
            raise ModelLoadError(
                f"EMBED_RUNTIME={requested} but the {requested} package is not installed: `pip install "
                f"{requested}` (`make venv` installs it), or set EMBED_RUNTIME=auto to use what is there"
            )
    return requested


def choose_precision(requested: str, runtime: str, device: str, *, cpu_bf16: bool = True) -> str:
    """EMBED_PRECISION → fp16, f32, bf16 or int8 for this runtime and device; ModelLoadError when impossible.

    `cpu_bf16`: whether auto may pick bf16 on a CPU for this model (an extractor whose vectors drift in bf16
    says no)."""
    cuda = device.startswith("cuda")
    if requested == "auto":
        if cuda:
            return "fp16"
        return "bf16" if cpu_bf16 and runtime == "openvino" and openvino_has_bf16() else "f32"
    if requested == "bf16":
        if runtime == "openvino" and not openvino_has_bf16():
            raise ModelLoadError("EMBED_PRECISION=bf16 but this CPU has no native bf16 (OpenVINO): use auto or f32")
        if runtime == "onnxruntime" or (runtime == "torch" and not cuda):
            raise ModelLoadError(
                f"EMBED_PRECISION=bf16 is not offered by {runtime} on the CPU: use EMBED_RUNTIME=openvino, or f32"
            )
    if requested == "int8" and runtime != "onnxruntime":
        raise ModelLoadError(
            "EMBED_PRECISION=int8 (weights quantized to 8 bits) runs with EMBED_RUNTIME=onnxruntime only"
        )
    return requested


@lru_cache(maxsize=1)
def openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes natively in bf16 here (AVX-512 BF16 or AMX)."""
    if not installed("openvino"):
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def cpu_budget() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def runtime_version(runtime: str) -> str:
    """The installed version of an exported runtime (openvino, onnxruntime): part of the export cache key."""
    module = importlib.import_module(runtime)
    return str(getattr(module, "__version__", None) or module.get_version())


class Towers(Protocol):
    """A runtime's handle on the two towers (shared/towers.py gives their contract)."""

    runtime: str
    precision: str
    threads: int
    has_text: bool  # False for an image-only extractor

    def batch(self, pixels: Sequence[Any]) -> Any:
        """Decoded uint8 images (HWC arrays, CHW tensors) → the image tower's input (N, 3, S, S)."""

    def images(self, batch: Any) -> np.ndarray:
        """The image tower on `batch()`'s result → float32 (N, dim)."""

    def texts(self, tokens: torch.Tensor) -> np.ndarray:
        """The text tower on token ids (N, context) → float32 (N, dim); only when `has_text` (Embedder checks)."""


class TorchTowers:
    """The towers in torch eager, on the CPU or a CUDA device."""

    runtime = "torch"

    def __init__(self, image: torch.nn.Module, text: torch.nn.Module | None, device: str, precision: str,
                 threads: int) -> None:
        self.image, self.text, self.device, self.precision, self.threads = image, text, device, precision, threads
        self.has_text = text is not None

    def batch(self, pixels: Sequence[Any]) -> torch.Tensor:
        from shared.decode import as_batch, synchronize

        x = as_batch(pixels, self.device)
        synchronize(self.device)
        return x

    def images(self, batch: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.image(batch).float().cpu().numpy()

    def texts(self, tokens: torch.Tensor) -> np.ndarray:
        import torch

        assert self.text is not None, "no text tower: Embedder.encode_text checks has_text first"
        with torch.inference_mode():
            return self.text(tokens.to(self.device)).float().cpu().numpy()


class _ExportedTowers:
    """Shared by OpenVINO and ONNX Runtime: numpy in, numpy out, on the CPU."""

    runtime = ""

    def __init__(self, precision: str, threads: int, towers: tuple[str, ...]) -> None:
        self.precision, self.threads = precision, threads
        self.has_text = "text" in towers

    def batch(self, pixels: Sequence[Any]) -> np.ndarray:
        arrays = [p if isinstance(p, np.ndarray) else p.cpu().permute(1, 2, 0).numpy() for p in pixels]
        return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))

    def images(self, batch: np.ndarray) -> np.ndarray:
        return self._run("image", batch)

    def texts(self, tokens: torch.Tensor) -> np.ndarray:
        return self._run("text", np.ascontiguousarray(tokens.cpu().numpy().astype(np.int64)))

    def _run(self, tower: str, inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _ShapeGate:
    """Inferences run side by side, except an infer request's first one at an input shape, which runs alone.

    The towers take any batch size; an OpenVINO CPU infer request adapts itself to each new shape the first
    time it meets it (shape inference, memory). Two requests doing that at the same moment can hang for
    good: seen on 2 cores, a worker's two task threads stuck in `InferRequest.infer` on their first batches
    (py-spy: both inside the input update). A handful of shapes per request, so running those alone costs
    nothing in the long run."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0  # inferences at known shapes
        self._alone = False  # a first inference at a new shape

    @contextmanager
    def side_by_side(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._alone)
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._alone and not self._running)
            self._alone = True
        try:
            yield
        finally:
            with self._changed:
                self._alone = False
                self._changed.notify_all()


class OpenVINOTowers(_ExportedTowers):
    runtime = "openvino"

    def __init__(self, folder: Path, precision: str, threads: int, towers: tuple[str, ...]) -> None:
        import openvino as ov

        super().__init__(precision, threads, towers)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        self._compiled = {t: core.compile_model(core.read_model(folder / f"{t}.xml"), "CPU", config)
                          for t in towers}
        self._local = threading.local()  # an infer request serves one thread at a time
        self._gate = _ShapeGate()

    def _run(self, tower: str, inputs: np.ndarray) -> np.ndarray:
        requests = self._local.__dict__.setdefault("requests", {})
        if tower not in requests:
            with self._gate.alone():
                requests[tower] = (self._compiled[tower].create_infer_request(), set())
        request, shapes = requests[tower]
        with self._gate.side_by_side() if inputs.shape in shapes else self._gate.alone():
            request.infer({0: inputs})
            shapes.add(inputs.shape)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)


class OnnxRuntimeTowers(_ExportedTowers):
    runtime = "onnxruntime"

    def __init__(self, folder: Path, precision: str, threads: int, towers: tuple[str, ...]) -> None:
        import onnxruntime as ort

        super().__init__(precision, threads, towers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._sessions = {t: ort.InferenceSession(str(folder / f"{t}.onnx"), options,
                                                  providers=["CPUExecutionProvider"])
                          for t in towers}

    def _run(self, tower: str, inputs: np.ndarray) -> np.ndarray:
        session = self._sessions[tower]
        return np.asarray(session.run(None, {session.get_inputs()[0].name: inputs})[0], dtype=np.float32)


def load_towers(folder: Path, runtime: str, precision: str, threads: int, *, text: bool = True) -> Towers:
    """The exported towers in `folder` (the text tower too unless `text` is False: an image-only extractor)."""
    towers = ("image", "text") if text else ("image",)
    if runtime == "openvino":
        return OpenVINOTowers(folder, precision, threads, towers)
    return OnnxRuntimeTowers(folder, precision, threads, towers)
