"""The decoders agree: Pillow on the CPU and the tensor path (nvJPEG on a GPU; the same code runs with
libjpeg-turbo on the CPU here) give the same model input and the same embedding, in every DECODE mode."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.synthetic import jpeg, photo
from shared.config import Settings
from shared.decode import Decoder, StageTimes, decode_jpegs, decode_mode, orient, resize_crop
from shared.embedder import load_embedder
from shared.imaging import header, load_image, to_model_input
from tests.test_pipeline_e2e import wait_job

SIZES = [(640, 480), (1920, 1080), (333, 500), (3000, 2000)]


@pytest.fixture(scope="module")
def embedder(tiny_model, models_data_dir):
    config, checkpoint = tiny_model
    return load_embedder(Settings.explicit(device="cpu", model_name=str(config),
                                  model_pretrained=str(checkpoint), data_dir=models_data_dir))


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(2) as p:
        yield p


def pillow_input(data: bytes, size: int) -> np.ndarray:
    return to_model_input(load_image(data, min_side=size).image, size)


def tensor_input(data: bytes, size: int, device: str = "cpu") -> torch.Tensor:
    (image,), failed = decode_jpegs([data], device)
    assert failed == []
    return resize_crop(orient(image, header(data).orientation), size)


@pytest.mark.parametrize("size", SIZES)
def test_tensor_path_gives_the_same_pixels(size):
    data = jpeg(11, size)
    a = pillow_input(data, 224).astype(np.float64)
    b = tensor_input(data, 224).permute(1, 2, 0).numpy().astype(np.float64)
    assert a.shape == b.shape == (224, 224, 3)
    assert np.abs(a - b).mean() < 1.5, np.abs(a - b).mean()  # measured ~0.3 of 255 levels


@pytest.mark.parametrize("size", SIZES)
def test_tensor_path_gives_the_same_embedding(embedder, size):
    data = jpeg(12, size)
    pil, ten = embedder.encode_images([pillow_input(data, 64), tensor_input(data, 64)])
    assert float(pil @ ten) > 0.99


def _with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(orientation):
    data = _with_orientation(photo(13, (400, 240)), orientation)
    a = pillow_input(data, 128).astype(np.float64)
    b = tensor_input(data, 128).permute(1, 2, 0).numpy().astype(np.float64)
    assert np.abs(a - b).mean() < 1.5


def _mixed_batch() -> list[tuple[str, bytes]]:
    cmyk = io.BytesIO()
    photo(14).convert("CMYK").save(cmyk, format="JPEG")
    gray = io.BytesIO()
    photo(15).convert("L").save(gray, format="JPEG")
    png = io.BytesIO()
    photo(16).save(png, format="PNG")
    return [("rgb", jpeg(17, (800, 600))), ("rgb2", jpeg(18, (500, 700))), ("cmyk", cmyk.getvalue()),
            ("gray", gray.getvalue()), ("png", png.getvalue()), ("truncated", jpeg(19)[:600]),
            ("text", b"not an image at all")]


@pytest.mark.parametrize("mode", ["gpu", "auto"])
def test_every_decode_mode_gives_the_same_result(pool, mode):
    batch = _mixed_batch()
    cpu = Decoder(pool, size=96, max_pixels=10**8, mode="cpu")
    other = Decoder(pool, size=96, max_pixels=10**8, mode=mode, device="cpu", pool_threads=2)
    other._rates = {"cpu": 1.0, "gpu": 1.0}  # auto: half the JPEGs to each path, so both run
    expected, expected_failed = cpu.decode(batch)
    times = StageTimes()
    got, failed = other.decode(batch, times)
    assert set(got) == set(expected) == {"rgb", "rgb2", "cmyk", "gray", "png"}
    assert set(failed) == set(expected_failed) == {"truncated", "text"}
    assert "truncated" in failed["truncated"].lower() and "plain text" in failed["text"]
    for key, d in got.items():
        pixels = d.pixels if isinstance(d.pixels, np.ndarray) else d.pixels.permute(1, 2, 0).numpy()
        assert np.abs(pixels.astype(float) - expected[key].pixels.astype(float)).mean() < 1.5, key
        assert (d.format, d.width, d.height) == (expected[key].format, expected[key].width, expected[key].height)
    assert times.decode > 0


def test_mixed_numpy_and_tensor_batches_encode_in_order(embedder):
    datas = [jpeg(20), jpeg(21), jpeg(22)]
    reference = embedder.encode_images([pillow_input(d, 64) for d in datas])
    mixed = embedder.encode_images([pillow_input(datas[0], 64), tensor_input(datas[1], 64),
                                    pillow_input(datas[2], 64)])
    assert np.allclose(np.sum(reference * mixed, axis=1), 1, atol=1e-2)


def test_decode_mode_follows_the_device():
    assert decode_mode("auto", "cpu") == "cpu" and decode_mode("cpu", "cuda") == "cpu"
    assert decode_mode("auto", "cuda:1") == "auto" and decode_mode("gpu", "cuda") == "gpu"
    with pytest.raises(ValueError, match="DECODE=gpu needs"):
        decode_mode("gpu", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: run on the GPU machine")
@pytest.mark.parametrize("size", SIZES)
def test_nvjpeg_gives_the_same_pixels(size):
    data = jpeg(23, size)
    a = pillow_input(data, 224).astype(np.float64)
    b = tensor_input(data, 224, "cuda").permute(1, 2, 0).cpu().numpy().astype(np.float64)
    assert np.abs(a - b).mean() < 1.5


def test_jobs_record_seconds_per_stage(client):
    body = client.post("/images", files=[("files", (f"stage-{n}.jpg", jpeg(65_000 + n))) for n in range(3)]).json()
    job = wait_job(client, body["job_id"])
    stages = job["stage_s"]
    assert set(stages) == {"read", "decode", "transfer", "encode", "upsert", "batches"}
    assert stages["batches"] >= 1 and stages["decode"] > 0 and stages["encode"] > 0 and stages["upsert"] > 0


def test_gpu_decodes_are_chunked_by_pixels(pool, monkeypatch):
    """Full-size decodes are split into calls under GPU_PIXELS_PER_CALL; the result does not change."""
    import shared.decode

    batch = [(f"k{n}", jpeg(30 + n, (640, 480))) for n in range(5)]
    whole = Decoder(pool, size=64, max_pixels=10**8, mode="gpu").decode(batch)[0]
    monkeypatch.setattr(shared.decode, "GPU_PIXELS_PER_CALL", 2 * 640 * 480)
    calls = []
    real = shared.decode.decode_jpegs
    monkeypatch.setattr(shared.decode, "decode_jpegs", lambda datas, device: calls.append(len(datas)) or
                        real(datas, device))
    chunked = Decoder(pool, size=64, max_pixels=10**8, mode="gpu").decode(batch)[0]
    assert calls == [2, 2, 1]
    assert all(torch.equal(whole[k].pixels, chunked[k].pixels) for k in whole)
