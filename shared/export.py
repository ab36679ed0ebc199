"""Export the towers once, cache them under `$DATA_DIR/models/exported/`, and load them back.

One folder per model identity and runtime (`exported/<model>/<runtime>/`) holds the runtime's
files and `key.json`: what they were built from (model identity and checkpoint file, the runtime's,
torch's and the extractor library's versions, this module's format). A later start whose key matches loads the
files (seconds); a changed key (stale) or files that are missing, truncated or fail to load (corrupt)
are rebuilt, each with a log line. Several processes starting at once (API, workers) take a file lock:
one exports, the others then load its result. A folder is renamed into place only when complete.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is exported changes, so every cache is rebuilt once
OPSET = 17
T = TypeVar("T")


def cache_folder(models_dir: Path, label: str, runtime: str) -> Path:
    """`$DATA_DIR/models/exported/<model label>/<runtime>`, with the label made file-name safe."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "model"
    return models_dir / "exported" / slug / runtime


def export_onnx(module: torch.nn.Module, example: torch.Tensor, input_name: str, path: Path) -> None:
    """The module as ONNX, batch dimension dynamic (TorchScript exporter: stable for CLIP towers).

    Traced with gradients on: under no_grad, torch's attention takes a fused fast path that ONNX lacks."""
    import torch

    with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on ops it maps (argmax pooling is non-negative)
        torch.onnx.export(
            module, (example,), str(path), input_names=[input_name], output_names=["features"],
            dynamic_axes={input_name: {0: "batch"}, "features": {0: "batch"}}, opset_version=OPSET,
            dynamo=False,
        )


def cached(folder: Path, key: dict[str, Any], build: Callable[[Path], None], load: Callable[[Path], T]) -> T:
    """`load(folder)`, after `build(tmp)` made the folder's files when the cache is missing, stale or corrupt."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    key = {**key, "format": FORMAT}
    with _locked(folder.with_name(folder.name + ".lock")):
        problem = _problem(folder, key)
        if problem is None:
            try:
                return load(folder)
            except Exception as exc:  # a file that passed the size check but does not load
                problem = f"corrupt ({type(exc).__name__}: {exc})"
        if problem == "missing":
            log.info("exporting %s for %s once (cached in %s)", key.get("model"), key.get("runtime"), folder)
        else:
            log.warning("exported model cache %s is %s: rebuilding it", folder, problem)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / "key.json").write_text(json.dumps({"key": key, "files": files}, indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return load(folder)


def _problem(folder: Path, key: dict[str, Any]) -> str | None:
    """None when the folder holds a complete build for `key`; else why not (missing, stale, corrupt)."""
    try:
        record = json.loads((folder / "key.json").read_text())
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:
        return f"corrupt (key.json: {exc})"
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return "corrupt (key.json)"
    if record.get("key") != key:
        old: dict[str, Any] = record["key"] if isinstance(record.get("key"), dict) else {}
        changed = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
        return f"stale ({', '.join(changed)} changed)"
    for name, size in record["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return f"corrupt ({name} is missing or has the wrong size)"
    return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def export_towers(folder: Path, runtime: str, precision: str, image: torch.nn.Module, text: torch.nn.Module | None,
                  image_size: int, tokens: torch.Tensor | None) -> None:
    """Write the runtime's files for the towers into `folder` (the `build` step of `cached`): ONNX, converted
    to OpenVINO's format for openvino, weights quantized for onnxruntime's int8. `text` is None for an
    image-only extractor."""
    import torch

    pixels = torch.randint(0, 256, (2, 3, image_size, image_size), dtype=torch.uint8)
    towers = [("image", image, pixels, "pixels")]
    if text is not None and tokens is not None:
        towers.append(("text", text, tokens, "tokens"))
    for name, module, example, input_name in towers:
        onnx_path = folder / f"{name}.onnx"
        export_onnx(module, example, input_name, onnx_path)
        if runtime == "openvino":
            import openvino as ov

            ov.save_model(ov.convert_model(onnx_path), folder / f"{name}.xml", compress_to_fp16=False)
            onnx_path.unlink()
            for extra in folder.glob(f"{name}.onnx*"):  # external weight files of very large towers
                extra.unlink()
        elif precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = folder / f"{name}.int8.onnx"
            root = logging.getLogger()
            level, root.level = root.level, max(root.level, logging.WARNING)  # one INFO line per tensor
            try:
                quantize_dynamic(onnx_path, quantized, weight_type=QuantType.QInt8, per_channel=True)
            finally:
                root.setLevel(level)
            quantized.replace(onnx_path)
