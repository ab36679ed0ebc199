"""OpenVINO and ONNX Runtime give torch's vectors on real photos and texts; exports are cached, and rebuilt
when stale or corrupt; the runtime and precision rules, a machine without OpenVINO, the thread budget."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from scripts.devservices import REPO
from scripts.photosets import real_photos
from shared.config import Settings
from shared.embedder import Embedder, load_embedder
from shared.imaging import load_image, to_model_input
from shared.runtime import _ShapeGate, choose_precision, choose_runtime, cpu_budget, openvino_has_bf16
from shared.types import ModelLoadError

TEXTS = ["a photo of a flower", "a ladybird on a green leaf", "sand dunes under a blue sky",
         "storm clouds over the sea", "rain drops on a window", "una flor amarilla",
         "a very long description of a quiet garden in the morning with dew on the grass " * 8]


def load(tiny_model, data_dir: Path, **overrides) -> Embedder:
    config, checkpoint = tiny_model
    values = {"device": "cpu", "data_dir": data_dir, "model_name": str(config),
              "model_pretrained": str(checkpoint), **overrides}
    return load_embedder(Settings.explicit(**values))


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    return real_photos()


@pytest.fixture(scope="module")
def reference(tiny_model, photos, tmp_path_factory):
    """torch's vectors (f32): the model's own."""
    embedder = load(tiny_model, tmp_path_factory.mktemp("data"), embed_runtime="torch")
    pixels = [to_model_input(load_image(p, min_side=embedder.image_size).image, embedder.image_size)
              for p in photos]
    return pixels, embedder.encode_images(pixels), embedder.encode_text(TEXTS)


@pytest.mark.parametrize(("runtime", "precision"), [("openvino", "auto"), ("openvino", "f32"),
                                                    ("onnxruntime", "auto")])
def test_every_runtime_gives_torchs_vectors_on_real_photos(tiny_model, reference, tmp_path, runtime, precision):
    pixels, images, texts = reference
    assert len(pixels) >= 10
    embedder = load(tiny_model, tmp_path, embed_runtime=runtime, embed_precision=precision)
    assert embedder.runtime == runtime
    if runtime == "openvino" and precision == "auto":
        assert embedder.precision == ("bf16" if openvino_has_bf16() else "f32")
    assert embedder.info == load(tiny_model, tmp_path, embed_runtime="torch").info  # same model identity
    image_cos = np.sum(embedder.encode_images(pixels) * images, axis=1)
    text_cos = np.sum(embedder.encode_text(TEXTS) * texts, axis=1)
    assert image_cos.min() >= 0.999, image_cos
    assert text_cos.min() >= 0.999, text_cos
    # any batch size (dynamic batch), in any grouping, gives the same vectors
    singles = np.concatenate([embedder.encode_images([p]) for p in pixels[:3]])
    assert np.allclose(singles, embedder.encode_images(pixels[:3]), atol=2e-3)


def test_int8_is_an_explicit_identity_of_its_own(tiny_model, reference, tmp_path):
    pixels, images, _ = reference
    embedder = load(tiny_model, tmp_path, embed_runtime="onnxruntime", embed_precision="int8")
    assert embedder.info.precision == "int8" and embedder.info.label().endswith("/int8")
    assert embedder.info != load(tiny_model, tmp_path, embed_runtime="onnxruntime").info
    assert np.sum(embedder.encode_images(pixels) * images, axis=1).min() > 0.98


def _exports(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shared.export"]


def test_export_is_cached_and_reused(tiny_model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="shared.export")
    first = load(tiny_model, tmp_path, embed_runtime="openvino")
    key = next(tmp_path.glob("models/exported/*/openvino/key.json"))
    built = key.stat().st_mtime_ns
    assert any("exporting" in m for m in _exports(caplog))
    caplog.clear()
    second = load(tiny_model, tmp_path, embed_runtime="openvino")
    assert _exports(caplog) == [] and key.stat().st_mtime_ns == built
    assert np.allclose(first.encode_text(["cat"]), second.encode_text(["cat"]))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "key"])
def test_corrupt_export_is_rebuilt_with_a_log_line(tiny_model, tmp_path, caplog, damage):
    reference = load(tiny_model, tmp_path, embed_runtime="openvino").encode_text(TEXTS)
    folder = next(tmp_path.glob("models/exported/*/openvino"))
    weights = folder / "image.bin"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":  # same size, so only loading it finds out
        (folder / "image.xml").write_bytes(b"\0" * (folder / "image.xml").stat().st_size)
    else:
        (folder / "key.json").write_text("{not json")
    caplog.set_level(logging.INFO, logger="shared.export")
    rebuilt = load(tiny_model, tmp_path, embed_runtime="openvino")
    assert any("corrupt" in m and "rebuilding" in m for m in _exports(caplog)), _exports(caplog)
    assert np.allclose(rebuilt.encode_text(TEXTS), reference, atol=1e-5)
    caplog.clear()
    load(tiny_model, tmp_path, embed_runtime="openvino")
    assert _exports(caplog) == []


def test_stale_export_is_rebuilt_when_the_weights_change(tiny_model, tmp_path, caplog):
    _, checkpoint = tiny_model
    load(tiny_model, tmp_path, embed_runtime="onnxruntime")
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file was replaced
    try:
        caplog.set_level(logging.INFO, logger="shared.export")
        load(tiny_model, tmp_path, embed_runtime="onnxruntime")
        assert any("stale (weights changed)" in m for m in _exports(caplog)), _exports(caplog)
    finally:
        os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_runtime_rules(monkeypatch):
    import shared.runtime as runtime

    assert choose_runtime("auto", "cuda") == "torch"
    assert choose_runtime("auto", "cpu") == "openvino"
    assert choose_runtime("torch", "cpu") == "torch"
    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        choose_runtime("onnxruntime", "cuda:0")
    monkeypatch.setattr(runtime, "installed", lambda name: name != "openvino")
    assert choose_runtime("auto", "cpu") == "torch"
    with pytest.raises(ModelLoadError, match="openvino package is not installed"):
        choose_runtime("openvino", "cpu")


def test_precision_rules():
    assert choose_precision("auto", "torch", "cuda") == "fp16"
    assert choose_precision("auto", "torch", "cpu") == "f32"
    assert choose_precision("auto", "onnxruntime", "cpu") == "f32"
    assert choose_precision("f32", "openvino", "cpu") == "f32"
    for runtime in ("torch", "onnxruntime"):
        with pytest.raises(ModelLoadError, match="bf16 is not offered"):
            choose_precision("bf16", runtime, "cpu")
    with pytest.raises(ModelLoadError, match="onnxruntime only"):
        choose_precision("int8", "openvino", "cpu")


def test_a_machine_without_openvino_falls_back_to_torch_or_says_what_is_missing(tiny_model, tmp_path):
    config, checkpoint = tiny_model
    code = (
        "import sys; sys.modules['openvino'] = None; sys.path.insert(0, sys.argv[1])\n"
        "from shared.config import Settings; from shared.embedder import load_embedder\n"
        "from shared.types import ModelLoadError\n"
        "values = dict(device='cpu', data_dir=sys.argv[2], model_name=sys.argv[3], model_pretrained=sys.argv[4])\n"
        "print(load_embedder(Settings.explicit(**values)).runtime)\n"
        "try:\n    load_embedder(Settings.explicit(embed_runtime='openvino', **values))\n"
        "except ModelLoadError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO), str(tmp_path), str(config), str(checkpoint)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "torch"
    assert "EMBED_RUNTIME=openvino but the openvino package is not installed" in lines[-1]


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime", "torch"])
def test_threads_follow_the_cpu_budget(tiny_model, tmp_path, runtime):
    assert 1 <= cpu_budget() <= (os.cpu_count() or 1)
    assert load(tiny_model, tmp_path, embed_runtime=runtime).towers.threads == cpu_budget()
    embedder = load(tiny_model, tmp_path, embed_runtime=runtime, embed_threads=1)
    assert embedder.towers.threads == 1 and "1 threads" in embedder.describe()
    if runtime == "openvino":
        compiled = embedder.towers._compiled["image"]  # type: ignore[attr-defined]
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_a_first_inference_at_a_new_shape_runs_alone_and_known_shapes_run_side_by_side():
    gate = _ShapeGate()
    inside: list[str] = []
    seen: list[tuple[str, ...]] = []
    lock = threading.Lock()

    def infer(kind: str, hold: float) -> None:
        with gate.alone() if kind == "new" else gate.side_by_side():
            with lock:
                inside.append(kind)
                seen.append(tuple(inside))
            time.sleep(hold)
            with lock:
                inside.remove(kind)

    threads = [threading.Thread(target=infer, args=(kind, 0.2)) for kind in ("known", "known", "new", "known", "new")]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(5)
    assert not any(t.is_alive() for t in threads)
    assert all(s == ("new",) for s in seen if "new" in s)  # a new shape never meets another inference
    assert any(s.count("known") == 2 for s in seen)  # known shapes do run together


def test_openvino_towers_in_many_threads_at_many_shapes(tiny_model, reference, tmp_path):
    """Threads each with their own infer request, every batch size new to each at first: the same vectors as
    one at a time (the worker's two task threads meet exactly this on their first batches)."""
    pixels, vectors, _ = reference
    embedder = load(tiny_model, tmp_path, embed_runtime="openvino", embed_precision="f32")
    sizes = [1, 2, 3, 4, len(pixels)] * 3
    results: dict[tuple[int, int], tuple[int, np.ndarray]] = {}

    def run(n: int) -> None:
        for i, size in enumerate(sizes[n:] + sizes[:n]):
            results[n, i] = (size, embedder.encode_images(pixels[:size]))

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads) and len(results) == 4 * len(sizes)
    for size, got in results.values():
        assert np.allclose(got, vectors[:size], atol=2e-3)
