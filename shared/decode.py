"""Decode a batch of images into model input, on the CPU, on the GPU, or both (`DECODE=auto|cpu|gpu`).

- cpu: Pillow in a thread pool (`imaging.load_image` + `to_model_input`: JPEG draft mode, any format).
- gpu: JPEGs in RGB or grayscale are decoded together with nvJPEG (`torchvision.io.decode_jpeg` on the
  CUDA device), then oriented, resized and centre-cropped on the GPU with the same geometry; any other
  image, or a JPEG nvJPEG refuses, goes through the CPU path.
- auto: on a CUDA device, both at once: the CPU pool decodes the non-JPEGs and a share of the JPEGs
  (sized from the measured rates of both paths) while the GPU decodes the rest; on a CPU-only machine
  the same as cpu.

Either way the result is uint8 at the model's size, normalised later on the model's device, so the
embedding of an image is the same (within 1e-2 cosine) whichever decoder ran. torch and torchvision are
imported only when the tensor path runs, so this module imports on machines without CUDA.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from shared.imaging import Header, header, load_image, resized_size, to_model_input
from shared.types import ImageError, StageTimes

if TYPE_CHECKING:
    import torch

DecodeMode = Literal["auto", "cpu", "gpu"]
TENSOR_MODES = ("RGB", "L")  # JPEG colour modes nvJPEG decodes like Pillow does (CMYK etc. go to the CPU)
GPU_PIXELS_PER_CALL = 256_000_000  # decoded at full size: ~0.8 GB of RGB per nvJPEG call (21 photos of 12 MP)


@dataclass(frozen=True)
class Decoded:
    """One image ready for the model: its header facts and its pixels (HWC numpy, or CHW tensor on the device)."""

    format: str
    width: int
    height: int
    pixels: Any


Outcome = tuple[str, Decoded | str]  # (key, the decoded image or why it failed)


def decode_mode(setting: DecodeMode, device: str) -> DecodeMode:
    """The mode to run for DECODE=`setting` with the model on `device` (ValueError if impossible)."""
    on_gpu = device.startswith("cuda")
    if setting == "gpu" and not on_gpu:
        raise ValueError(f"DECODE=gpu needs the model on a CUDA device, but it runs on {device}; use DECODE=auto")
    return setting if on_gpu else "cpu"


class Decoder:
    """Turns (key, bytes-or-path) pairs into model input; one per worker process, shared by its task threads.

    `mode` gpu/auto run the tensor path on `device` (nvJPEG on CUDA; on the CPU the same code runs with
    libjpeg-turbo, which is how the tests check it without a GPU). Use `decode_mode` to pick the mode.
    """

    def __init__(self, pool: Executor, *, size: int, max_pixels: int, mode: DecodeMode = "cpu",
                 device: str = "cpu", pool_threads: int = 1) -> None:
        self.pool = pool
        self.size = size
        self.max_pixels = max_pixels
        self.device = device
        self.mode = mode
        self._rates = {"cpu": 60.0 * max(1, pool_threads), "gpu": 2000.0}  # images/s, refined as batches run

    def decode(self, items: Sequence[tuple[str, bytes | Path]],
               times: StageTimes | None = None) -> tuple[dict[str, Decoded], dict[str, str]]:
        """({key: Decoded}, {key: why it failed}) for a batch; one bad image fails alone."""
        times = times or StageTimes()
        if self.mode == "cpu":
            return self._decode_cpu(items, times)
        failed: dict[str, str] = {}
        jpegs: list[tuple[str, bytes, Header]] = []  # for the tensor path
        rest: list[tuple[str, bytes | Path]] = []  # for Pillow
        for (key, _), (data, h) in zip(items, self.pool.map(lambda item: self._header(item, times), items),
                                       strict=True):
            if isinstance(h, str):
                failed[key] = h
            elif h.format == "JPEG" and h.mode in TENSOR_MODES:
                jpegs.append((key, data, h))
            else:
                rest.append((key, data))
        if self.mode == "auto" and jpegs:
            share = self._rates["cpu"] / (self._rates["cpu"] + self._rates["gpu"])
            n_cpu = int(len(jpegs) * share)
            rest += [(key, data) for key, data, _ in jpegs[:n_cpu]]
            jpegs = jpegs[n_cpu:]
        # The CPU pool works on its share while this thread feeds the GPU (no pool thread waits on another).
        started = time.perf_counter()
        cpu_work = [self.pool.submit(self._decode_timed, item, times) for item in rest]
        decoded, gpu_failed = self._decode_tensors(jpegs, times) if jpegs else ({}, set())
        gpu_done = time.perf_counter()
        cpu_results = [f.result() for f in cpu_work]
        if cpu_results:  # each path's rate from when its own work finished, so the split converges
            self._learn("cpu", len(rest), max(done for _, done in cpu_results) - started)
        if jpegs:
            self._learn("gpu", len(jpegs), gpu_done - started)
        retry = [(key, data) for key, data, _ in jpegs if key in gpu_failed]
        results = [r for r, _ in cpu_results] + [self._decode_one(item, times) for item in retry]
        decoded.update({k: r for k, r in results if isinstance(r, Decoded)})
        failed.update({k: r for k, r in results if isinstance(r, str)})
        return decoded, failed

    def _decode_timed(self, item: tuple[str, bytes | Path], times: StageTimes) -> tuple[Outcome, float]:
        return self._decode_one(item, times), time.perf_counter()

    def _learn(self, path: str, n: int, seconds: float) -> None:
        if n and seconds > 0:
            self._rates[path] = 0.8 * self._rates[path] + 0.2 * (n / seconds)

    def _read(self, data: bytes | Path, times: StageTimes) -> bytes:
        if isinstance(data, Path):
            with times.timing("read"):
                return data.read_bytes()
        return data

    def _header(self, item: tuple[str, bytes | Path], times: StageTimes) -> tuple[bytes, Header | str]:
        try:
            data = self._read(item[1], times)
        except OSError as exc:
            return b"", f"cannot read the image file: {exc}"
        try:
            return data, header(data, max_pixels=self.max_pixels)
        except ImageError as exc:
            return data, str(exc)

    def _decode_one(self, item: tuple[str, bytes | Path], times: StageTimes) -> Outcome:
        key, source = item
        try:
            data = self._read(source, times)
            with times.timing("decode"):
                loaded = load_image(data, min_side=self.size, max_pixels=self.max_pixels)
                pixels = to_model_input(loaded.image, self.size)
        except ImageError as exc:
            return key, str(exc)
        except OSError as exc:
            return key, f"cannot read the image file: {exc}"
        return key, Decoded(loaded.format, loaded.width, loaded.height, pixels)

    def _decode_cpu(self, items: Sequence[tuple[str, bytes | Path]],
                    times: StageTimes) -> tuple[dict[str, Decoded], dict[str, str]]:
        results = list(self.pool.map(lambda item: self._decode_one(item, times), items))
        return ({k: r for k, r in results if isinstance(r, Decoded)},
                {k: r for k, r in results if isinstance(r, str)})

    def _decode_tensors(self, jpegs: list[tuple[str, bytes, Header]],
                        times: StageTimes) -> tuple[dict[str, Decoded], set[str]]:
        decoded: dict[str, Decoded] = {}
        failed: set[str] = set()
        with times.timing("decode"):
            for chunk in _by_pixels(jpegs, GPU_PIXELS_PER_CALL):  # full-size decodes: bound the GPU memory
                images, bad = decode_jpegs([data for _, data, _ in chunk], self.device)
                failed.update(chunk[i][0] for i in bad)
                for (key, _, h), image in zip(chunk, images, strict=True):
                    if image is not None:
                        pixels = resize_crop(orient(image, h.orientation), self.size)
                        decoded[key] = Decoded(h.format, h.width, h.height, pixels)
                del images
            synchronize(self.device)
        return decoded, failed


def _by_pixels(jpegs: list[tuple[str, bytes, Header]], budget: int) -> Iterator[list[tuple[str, bytes, Header]]]:
    """Consecutive chunks whose decoded size stays under `budget` pixels (at least one image each)."""
    chunk: list[tuple[str, bytes, Header]] = []
    pixels = 0
    for item in jpegs:
        size = item[2].width * item[2].height
        if chunk and pixels + size > budget:
            yield chunk
            chunk, pixels = [], 0
        chunk.append(item)
        pixels += size
    if chunk:
        yield chunk


def decode_jpegs(datas: list[bytes], device: str) -> tuple[list[torch.Tensor | None], list[int]]:
    """JPEG bytes → RGB uint8 CHW tensors on `device` (nvJPEG on CUDA), batched; (images, failed indexes)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        try:
            return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)), []
        except RuntimeError:  # one bad file fails the whole call: decode one by one to find it
            images: list[torch.Tensor | None] = []
            for t in raw:
                try:
                    images.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
            return images, [i for i, img in enumerate(images) if img is None]


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a CHW tensor, as PIL's ImageOps.exif_transpose does."""
    import torch

    h, w = -2, -1
    if orientation == 2:
        return image.flip(w)
    if orientation == 3:
        return image.flip(h).flip(w)
    if orientation == 4:
        return image.flip(h)
    if orientation == 5:
        return image.transpose(h, w)
    if orientation == 6:
        return torch.rot90(image, k=-1, dims=(h, w))
    if orientation == 7:
        return image.transpose(h, w).flip(h).flip(w)
    if orientation == 8:
        return torch.rot90(image, k=1, dims=(h, w))
    return image


def resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shortest side to `size` (bicubic, antialiased like Pillow), centre crop; uint8 CHW in, uint8 CHW out."""
    import torch

    _, height, width = image.shape
    new_w, new_h = resized_size(width, height, size)
    x = image.unsqueeze(0).float()
    if (new_w, new_h) != (width, height):
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True,
                                            align_corners=False)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    x = x[0, :, top:top + size, left:left + size]
    return x.clamp_(0, 255).round_().to(torch.uint8)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so stage times are real (no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def as_batch(pixels: Sequence[np.ndarray | torch.Tensor], device: str) -> torch.Tensor:
    """Decoded pixels (HWC numpy from Pillow, CHW tensors from the GPU) → one uint8 NCHW tensor on `device`,
    in the given order. The numpy ones travel to the device together, from pinned memory."""
    import torch

    on_host = [i for i, p in enumerate(pixels) if isinstance(p, np.ndarray)]
    parts: list[torch.Tensor | None] = [None if isinstance(p, np.ndarray) else p for p in pixels]
    if on_host:
        host = torch.from_numpy(np.stack([pixels[i] for i in on_host])).permute(0, 3, 1, 2)
        if device != "cpu":
            host = host.pin_memory().to(device, non_blocking=True)
        for j, i in enumerate(on_host):
            parts[i] = host[j]
    return torch.stack([p for p in parts if p is not None])  # every slot is filled by now
