"""The model loads through the same path as real weights and matches open_clip's own preprocessing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from scripts.devservices import REPO
from scripts.synthetic import jpeg, photo
from shared.config import Settings
from shared.embedder import load_embedder
from shared.imaging import load_image, to_model_input
from shared.types import ModelLoadError


def settings(**overrides) -> Settings:
    return Settings.explicit(device="cpu", **overrides)


@pytest.fixture(scope="module")
def embedder(tiny_model, models_data_dir):
    config, checkpoint = tiny_model
    return load_embedder(settings(model_name=str(config), model_pretrained=str(checkpoint), data_dir=models_data_dir))


def test_checkpoint_loads_and_vectors_are_unit_float32(embedder):
    assert (embedder.info.name, embedder.info.dim, embedder.image_size) == ("proxima-tiny", 64, 64)
    assert not embedder.info.is_random
    pixels = [to_model_input(photo(i), embedder.image_size) for i in range(3)]
    vectors = embedder.encode_images(pixels)
    assert vectors.shape == (3, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    text = embedder.encode_text(["a photo of a cat", "a red car"])
    assert text.shape == (2, 64) and np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)


def test_same_embedding_as_open_clip_preprocessing(embedder, tiny_model):
    """Our uint8 path (draft decode, resize, crop, normalise on device) vs open_clip's own transform."""
    import open_clip
    import torch
    from PIL import Image

    _, checkpoint = tiny_model
    model, _, preprocess = open_clip.create_model_and_transforms("proxima-tiny", pretrained=str(checkpoint))
    model.eval()
    for seed, size in [(1, (320, 240)), (2, (1600, 1200)), (3, (200, 500))]:
        data = jpeg(seed, size)
        ours = embedder.encode_images([to_model_input(load_image(data, min_side=64).image, 64)])[0]
        with torch.inference_mode():
            import io

            ref = model.encode_image(preprocess(Image.open(io.BytesIO(data))).unsqueeze(0))
            ref = torch.nn.functional.normalize(ref, dim=-1)[0].numpy()
        assert float(ours @ ref) > 0.99, (seed, size, float(ours @ ref))


def test_random_weights_are_identical_in_every_process(tiny_model, models_data_dir):
    config, _ = tiny_model
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1])\n"
        "from shared.config import Settings; from shared.embedder import load_embedder\n"
        "s = Settings.explicit(device='cpu', model_name=sys.argv[2], model_pretrained='random', data_dir=sys.argv[3])\n"
        "print(json.dumps(load_embedder(s).encode_text(['hello'])[0][:8].tolist()))\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code, str(REPO), str(config), str(models_data_dir)],
                       capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        for _ in range(2)
    ]
    here = load_embedder(settings(model_name=str(config), model_pretrained="random", data_dir=models_data_dir))
    assert here.info.is_random
    assert runs[0] == runs[1]
    assert np.allclose(json.loads(runs[0]), here.encode_text(["hello"])[0][:8], atol=1e-6)


@pytest.mark.parametrize(
    ("extractor", "name", "pretrained", "message"),
    [
        ("open_clip", "No-Such-Model", "random", "not an open_clip architecture"),
        ("open_clip", "/nowhere/model.json", "random", "config file not found"),
        ("open_clip", "ViT-B-32", "/nowhere/weights.pt", "checkpoint file not found"),
        ("open_clip", "ViT-B-32", "not_a_tag", "not a pretrained tag"),
        ("efficientnet_lite", "ViT-B-32", "", "not an EfficientNet-Lite model .*efficientnet-lite0"),
        ("efficientnet_lite", "efficientnet-lite0", "laion2b_s34b_b79k", "takes 'imagenet'"),
        ("efficientnet_lite", "efficientnet-lite1", "/nowhere/lite1.pth", "checkpoint file not found"),
    ],
)
def test_bad_model_settings_fail_with_a_fix(extractor, name, pretrained, message):
    with pytest.raises(ModelLoadError, match=message):
        load_embedder(settings(extractor=extractor, model_name=name, model_pretrained=pretrained))


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    import torch

    checkpoint = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, checkpoint)
    with pytest.raises(ModelLoadError, match="does not hold efficientnet-lite0 weights"):
        load_embedder(settings(extractor="efficientnet_lite", model_pretrained=str(checkpoint),
                               embed_runtime="torch"))


def test_image_only_extractor_on_every_runtime(tmp_path):
    """EfficientNet-Lite0's real weights: the same vectors in torch, OpenVINO and ONNX Runtime (f32), and a
    clear NotSupported for text."""
    from scripts.photosets import real_photos
    from shared.imaging import load_image, to_model_input
    from shared.types import NotSupported

    pixels = [to_model_input(load_image(p).image, 224) for p in real_photos()[:4]]
    vectors = {}
    for runtime in ("torch", "openvino", "onnxruntime"):
        model = load_embedder(settings(extractor="efficientnet_lite", embed_runtime=runtime, data_dir=tmp_path))
        assert model.info.label() == "efficientnet_lite:efficientnet-lite0/imagenet" and not model.has_text
        assert model.precision == "f32"  # auto: no bf16 for this network (its vectors drift to ~0.996)
        vectors[runtime] = model.encode_images(pixels)
        with pytest.raises(NotSupported, match="image-only"):
            model.encode_text(["a cat"])
    for runtime, found in vectors.items():
        assert float((found * vectors["torch"]).sum(axis=1).min()) > 0.9999, runtime
