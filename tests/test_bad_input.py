"""Hostile input through the real API (real Redis, PostgreSQL+pgvector, Celery worker, tiny model).

Every case ends in a clear 4xx naming the problem, or in a per-file rejection with a reason; nothing else is
affected. The database is shared by the whole session: these tests use their own image seeds (63_000..63_999)
and never assume how many images it holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from scripts.synthetic import encode, jpeg, photo
from shared.config import Settings
from shared.imaging import load_image
from tests.test_pipeline_e2e import search, wait_job

# --------------------------------------------------------------------------------------------- helpers


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_path(settings: Settings, data: bytes) -> Path:
    """Where the store would keep these bytes (content-addressed)."""
    digest = image_id(data)
    return settings.images_dir / digest[:2] / digest[2:4] / digest


def upload(client, *files: tuple[str, bytes]) -> dict:
    response = client.post("/images", files=[("files", f) for f in files])
    assert response.status_code == 202, response.text
    return response.json()


def upload_one(client, name: str, data: bytes) -> tuple[dict, dict]:
    """(the file's entry in the upload response, the finished job)."""
    body = upload(client, (name, data))
    (entry,) = body["images"]
    return entry, wait_job(client, body["job_id"])


def results(client, data: bytes, top_k: int = 10, filename: str = "q.png") -> list[dict]:
    response = search(client, data, top_k=top_k, filename=filename)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def score_of(hits: list[dict], wanted: str) -> float:
    """The score of `wanted` among the hits; -1 if it is not among them (then it scored below all of them)."""
    return next((h["score"] for h in hits if h["id"] == wanted), -1.0)


def assert_finds_itself_first(client, data: bytes, wanted: str) -> None:
    hits = results(client, data, top_k=5)
    assert hits and hits[0]["id"] == wanted, hits
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)


def thumbnail_of(client, wanted: str) -> Image.Image:
    """The API's WebP thumbnail of an indexed image, decoded: how the service itself decoded the upload."""
    response = client.get(f"/images/{wanted}/thumbnail")
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def mean_diff(thumb: Image.Image, reference: Image.Image) -> float:
    """Mean absolute pixel difference (0..255) between a thumbnail and a reference picture at its size."""
    reference = reference.convert("RGB").resize(thumb.size, Image.Resampling.LANCZOS)
    return float(np.abs(np.asarray(thumb, np.int16) - np.asarray(reference, np.int16)).mean())


def png(img: Image.Image, **params) -> bytes:
    return encode(img, "PNG", **params)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(side: int = 50_000) -> bytes:
    """A tiny PNG whose IHDR declares side × side RGB pixels (7.5 GB decoded); IDAT holds a few zero rows."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no filter, no interlace
    idat = zlib.compress(b"\x00" * ((3 * side + 1) * 4), 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


BOMB = bomb_png()
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00\x01\x00\x00\x00" + bytes(200)
PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(44) + b"\x80\x00\x00\x00" + bytes(64) \
    + b"PE\x00\x00\x4c\x01" + bytes(100)
SVG = (b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4000" '
       b'height="4000"><rect width="4000" height="4000" fill="red"/></svg>\n')
HTML = b"<!DOCTYPE html>\n<html><head><title>x</title></head><body><img src=x onerror=alert(1)></body></html>\n"
TEXT = b"Dear diary,\nthis is not a picture, whatever its name says.\n"

# name, bytes, words the reason must contain (upload entry, job error and search 422 alike)
NOT_IMAGES = {
    "zero_bytes": ("empty.jpg", b"", "empty"),
    "plain_text": ("notes.jpg", TEXT, "plain text"),
    "html": ("page.jpg", HTML, "HTML"),
    "elf_executable": ("program.jpg", ELF, "executable"),
    "pe_executable": ("setup.jpg", PE, "executable"),
    "svg": ("drawing.svg", SVG, "SVG"),
    "decompression_bomb": ("bomb.png", BOMB, "decompression bomb"),
}


def truncated(fmt: str, seed: int) -> bytes:
    """A valid header (and some data), then the file stops."""
    data = jpeg(seed) if fmt == "JPEG" else png(photo(seed))
    return data[: len(data) // 2]


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def limited(stack_settings, tmp_path_factory):
    """A second API on the same stack with a 1 MB body limit, 20 files a request and one ingest root."""
    root = tmp_path_factory.mktemp("ingest-root")
    outside = tmp_path_factory.mktemp("outside-root")
    (outside / "secret.jpg").write_bytes(jpeg(63_500))
    (root / "inside").mkdir()
    (root / "link-out").symlink_to(outside, target_is_directory=True)
    settings = Settings.explicit(**{**stack_settings.model_dump(), "max_upload_mb": 1, "max_files_per_request": 20,
                           "ingest_roots": str(root)})
    assert settings.ingest_roots == [root]
    with TestClient(create_app(settings)) as c:
        yield SimpleNamespace(client=c, root=root, outside=outside)


@pytest.fixture(scope="module")
def known(client):
    """One indexed image: (id, bytes)."""
    data = jpeg(63_400)
    entry, job = upload_one(client, "known.jpg", data)
    assert job["state"] == "completed", job
    return entry["id"], data


@pytest.fixture(scope="module")
def known_on(backend_client):
    """A stack on each backend with one indexed image: (client, settings, id, bytes). Tests that use it run on
    every backend: what reaches the vector database (ids, names) must be handled alike by all three."""
    client, settings = backend_client
    data = jpeg(63_401)
    entry, job = upload_one(client, "known.jpg", data)
    assert job["state"] == "completed", job
    return SimpleNamespace(client=client, settings=settings, id=entry["id"], data=data)


# --------------------------------------------------------------------------------------------- not images


@pytest.mark.parametrize("case", list(NOT_IMAGES))
def test_not_an_image_is_rejected_with_reason(client, stack_settings, case):
    name, data, reason = NOT_IMAGES[case]
    entry, job = upload_one(client, name, data)
    assert (entry["id"], entry["filename"], entry["status"]) == (None, name, "rejected"), entry
    assert reason in entry["error"], entry
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("failed", 1, 0, 1), job
    assert [(e["filename"], reason in e["message"]) for e in job["errors"]] == [(name, True)], job["errors"]
    assert not stored_path(stack_settings, data).exists()  # never written to the store

    response = search(client, data, filename=name)  # the same bytes as a query
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]


def test_decompression_bomb_is_small_and_refused_from_its_header(client):
    assert len(BOMB) < 2_000
    assert struct.unpack(">II", BOMB[16:24]) == (50_000, 50_000)  # what its IHDR claims: 2.5 gigapixels
    response = search(client, BOMB, filename="bomb.png")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "decompression bomb" in detail and ("50000x50000" in detail or "2500000000" in detail), detail
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_fails_alone_with_reason(client, stack_settings, fmt):
    data = truncated(fmt, 63_010 if fmt == "JPEG" else 63_011)
    name = f"cut.{fmt.lower()}"
    entry, job = upload_one(client, name, data)
    assert entry["status"] == "queued", entry  # the header is fine; the worker finds the damage
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("failed", 1, 0, 1), job
    (error,) = job["errors"]
    assert error["filename"] == name and error["id"] == entry["id"]
    assert "truncated" in error["message"] and fmt in error["message"], error
    assert not stored_path(stack_settings, data).exists()  # a file that can never be indexed is removed
    assert client.get(f"/images/{entry['id']}").status_code == 404
    assert client.get(f"/images/{entry['id']}/similar").status_code == 404

    response = search(client, data, filename=name)
    assert response.status_code == 422
    assert "truncated" in response.json()["detail"]


# --------------------------------------------------------------------------------------------- odd but valid


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_is_indexed_from_its_first_frame(client, fmt):
    seed = 63_020 if fmt == "GIF" else 63_030
    first, second = photo(seed), photo(seed + 1)
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(first, fmt, save_all=True, append_images=[second], duration=200, loop=0, **params)
    with Image.open(io.BytesIO(data)) as img:
        assert img.is_animated and img.n_frames == 2
    entry, job = upload_one(client, f"animated.{fmt.lower()}", data)
    assert entry["status"] == "queued"
    assert (job["state"], job["done"]) == ("completed", 1), job

    by_first = results(client, png(first))
    assert by_first[0]["id"] == entry["id"], by_first  # the first frame as a still finds it first
    assert by_first[0]["score"] > 0.95
    by_second = results(client, png(second), top_k=50)
    assert score_of(by_second, entry["id"]) < by_first[0]["score"]  # it was not embedded from frame 2
    thumb = thumbnail_of(client, entry["id"])  # the decoded picture itself, independent of the model
    assert mean_diff(thumb, first) < 12 < mean_diff(thumb, second), (mean_diff(thumb, first), mean_diff(thumb, second))


def _cmyk() -> tuple[bytes, bytes]:
    img = photo(63_040)
    return encode(img.convert("CMYK"), "JPEG", quality=95), png(img)


def _sixteen_bit() -> tuple[bytes, bytes]:
    gray = photo(63_041).convert("L")
    wide = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)  # full 16-bit range
    return png(wide), png(gray)


def _palette_with_transparency() -> tuple[bytes, bytes]:
    img = photo(63_042).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return png(img, transparency=0), png(img.convert("RGBA"))


@pytest.mark.parametrize(("mode", "make"), [("CMYK", _cmyk), ("I;16", _sixteen_bit),
                                            ("P", _palette_with_transparency)])
def test_unusual_colour_mode_is_accepted_and_searchable(client, mode, make):
    data, equivalent = make()
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == mode
        assert mode != "P" or "transparency" in img.info
    entry, job = upload_one(client, f"mode-{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}", data)
    assert entry["status"] == "queued"
    assert (job["state"], job["done"]) == ("completed", 1), job
    assert_finds_itself_first(client, data, entry["id"])
    hits = results(client, equivalent)  # the same picture in an ordinary mode
    assert hits[0]["id"] == entry["id"] and hits[0]["score"] > 0.95, hits
    reference = load_image(equivalent).image
    assert mean_diff(thumbnail_of(client, entry["id"]), reference) < 8  # the colours came through right


def test_exif_rotated_jpeg_decodes_upright(client):
    upright_img = photo(63_050)
    stored = upright_img.transpose(Image.Transpose.ROTATE_90)  # the pixels as a camera held sideways writes them
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    rotated = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    upright = encode(upright_img, "JPEG", quality=95)
    with Image.open(io.BytesIO(rotated)) as img:
        assert img.size == (240, 320) and img.getexif()[0x0112] == 6
    body = upload(client, ("sideways.jpg", rotated), ("upright.jpg", upright))
    assert [i["status"] for i in body["images"]] == ["queued", "queued"]
    job = wait_job(client, body["job_id"])
    assert (job["state"], job["done"]) == ("completed", 2), job
    rotated_id, upright_id = (i["id"] for i in body["images"])

    for query, other in ((rotated, upright_id), (upright, rotated_id)):
        hits = results(client, query, top_k=3, filename="q.jpg")
        assert score_of(hits, other) > 0.95, hits  # among the top 3, very close
    thumb = thumbnail_of(client, rotated_id)  # how the service decoded it: upright, landscape
    assert thumb.size == (320, 240)
    assert mean_diff(thumb, upright_img) < 8 < mean_diff(thumb, upright_img.rotate(180))  # not turned the wrong way
    # control: the same stored pixels without the tag are a different (sideways) picture to the model
    no_tag = results(client, encode(stored, "JPEG", quality=95), top_k=50, filename="q.jpg")
    assert score_of(no_tag, upright_id) < score_of(results(client, rotated, top_k=5), upright_id)


def test_one_pixel_image_is_indexed(client):
    data = png(Image.new("RGB", (1, 1), (63, 1, 99)))
    entry, job = upload_one(client, "dot.png", data)
    assert entry["status"] == "queued"
    assert (job["state"], job["done"]) == ("completed", 1), job
    assert client.get(f"/images/{entry['id']}").content == data
    assert client.get(f"/images/{entry['id']}/similar?top_k=3").status_code == 200  # it has a vector
    assert client.get(f"/images/{entry['id']}/thumbnail").status_code == 200
    assert score_of(results(client, data, top_k=20), entry["id"]) == pytest.approx(1.0, abs=1e-3)


def test_panorama_20000_by_200_is_indexed(client):
    data = encode(photo(63_060, (20_000, 200)), "JPEG", quality=80)
    entry, job = upload_one(client, "panorama.jpg", data)
    assert entry["status"] == "queued"
    assert (job["state"], job["done"]) == ("completed", 1), job
    assert client.get(f"/images/{entry['id']}/similar?top_k=3").status_code == 200
    assert client.get(f"/images/{entry['id']}/thumbnail").status_code == 200
    assert_finds_itself_first(client, data, entry["id"])


# --------------------------------------------------------------------------------------------- request limits


def _stream(chunks: int, counter: list[int], head: bytes):
    async def body():
        for n in range(chunks):
            counter[0] += 1
            yield head if n == 0 else b"\0" * 65536
    return body()


async def _post_streamed(app, path: str, body, headers: dict[str, str]) -> httpx.Response:
    # httpx's ASGITransport hands the body to the app chunk by chunk (the TestClient reads it all first)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxima") as c:
        return await c.post(path, content=body, headers=headers)


def test_upload_over_max_upload_mb_is_413_before_the_body_is_read(limited):
    boundary = "bigbodyboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + jpeg(63_070)
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    chunks = 160  # 10 MB against a 1 MB limit
    for path in ("/images", "/search"):
        pulled = [0]
        response = asyncio.run(_post_streamed(limited.client.app, path, _stream(chunks, pulled, head), headers))
        assert response.status_code == 413, (path, response.text)
        assert "MAX_UPLOAD_MB" in response.json()["detail"]
        assert 1 < pulled[0] < 40, pulled  # stopped soon after the first megabyte, not at the end

    # a declared Content-Length over the limit is refused from the headers alone
    pulled = [0]
    response = asyncio.run(_post_streamed(limited.client.app, "/images", _stream(chunks, pulled, head),
                                          {**headers, "content-length": str(chunks * 65536)}))
    assert response.status_code == 413 and pulled[0] == 0
    assert limited.client.get("/health").json()["status"] == "ok"


def test_ten_thousand_files_in_one_request_are_refused(client):
    files = [("files", (f"{i}.jpg", b"x")) for i in range(10_000)]
    response = client.post("/images", files=files)
    assert response.status_code in (400, 413), response.text
    detail = response.json()["detail"]
    assert "files" in detail.lower() and ("1000" in detail or "MAX_FILES_PER_REQUEST" in detail), detail
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert search(client, jpeg(63_080)).status_code == 200  # and it still does its work


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"hostile-names-63") -> tuple[bytes, str]:
    """A multipart body built by hand, so file names reach the server byte for byte (NUL, 0xff...)."""
    out = []
    for filename, data in parts:
        out += [b"--", boundary, b'\r\nContent-Disposition: form-data; name="files"; filename="', filename,
                b'"\r\nContent-Type: application/octet-stream\r\n\r\n', data, b"\r\n"]
    out += [b"--", boundary, b"--\r\n"]
    return b"".join(out), f"multipart/form-data; boundary={boundary.decode()}"


def test_hostile_file_names_are_cleaned_and_never_a_path(known_on, tmp_path):
    client, stack_settings = known_on.client, known_on.settings
    escape_rel = b"../" * 40 + str(tmp_path / "rel.jpg").lstrip("/").encode()  # lands in tmp_path from any cwd
    names = [
        (escape_rel, "rel.jpg"),
        (str(tmp_path / "abs.jpg").encode(), "abs.jpg"),
        (b"..\\..\\..\\Windows\\System32\\win.jpg", "win.jpg"),
        (b"nul\x00byte.jpg", "nulbyte.jpg"),
        (b"../\x00../x\x00y.jpg", "xy.jpg"),
        (b"L" * 996 + b".jpg", None),  # 1,000 characters
        (b"\xff\xfe caf\xe9 \xc3(.jpg", None),  # not UTF-8
    ]
    images = [jpeg(63_100 + n, (96, 72)) for n in range(len(names))]
    body, content_type = _multipart([(raw, data) for (raw, _), data in zip(names, images, strict=True)])
    response = client.post("/images", content=body, headers={"content-type": content_type})
    assert response.status_code == 202, response.text
    entries = response.json()["images"]
    assert [e["status"] for e in entries] == ["queued"] * len(names), entries
    job = wait_job(client, response.json()["job_id"])
    assert (job["state"], job["done"]) == ("completed", len(names)), job

    for (raw, clean), data, entry in zip(names, images, entries, strict=True):
        name = entry["filename"]
        assert "/" not in name and "\\" not in name and "\x00" not in name and name not in ("", ".", ".."), name
        assert len(name) <= 255
        if clean is not None:
            assert name == clean, (raw, name)
        hit = results(client, data, top_k=1, filename="q.jpg")[0]
        assert (hit["id"], hit["filename"]) == (entry["id"], name)  # the stored metadata is the clean name
        assert stored_path(stack_settings, data).is_file()
    long_name, odd_name = entries[5]["filename"], entries[6]["filename"]
    assert set(long_name) == {"L"} and len(long_name) == 255
    assert odd_name.endswith(".jpg") and "caf" in odd_name
    json.dumps(odd_name, ensure_ascii=False).encode("utf-8")  # representable as UTF-8

    assert list(tmp_path.iterdir()) == []  # nothing written where the names pointed
    data_dir = stack_settings.images_dir.parent
    written = {p.name for p in data_dir.rglob("*")}
    assert not {"rel.jpg", "abs.jpg", "win.jpg", "nulbyte.jpg", "xy.jpg"} & written
    hex_id = re.compile(r"[0-9a-f]{64}")
    stored = [p for p in stack_settings.images_dir.rglob("*")
              if p.is_file() and not {".tmp", ".thumbs"} & set(p.relative_to(stack_settings.images_dir).parts)]
    assert stored and all(hex_id.fullmatch(p.name) and p.parent.parent.parent == stack_settings.images_dir
                          for p in stored)


@pytest.mark.parametrize("where", ["form", "query"])
@pytest.mark.parametrize("top_k", ["0", "-1", str(10**9), "ten"])
def test_bad_top_k_is_422(client, where, top_k):
    query = jpeg(63_090)
    if where == "form":
        response = client.post("/search", files={"file": ("q.jpg", query)}, data={"top_k": top_k})
    else:
        response = client.post(f"/search?top_k={top_k}", files={"file": ("q.jpg", query)})
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"][-1] == "top_k" and e["loc"][0] == ("body" if where == "form" else "query")
               for e in errors), errors


@pytest.mark.parametrize("top_k", ["0", "-1", str(10**9), "ten"])
def test_bad_top_k_for_more_like_this_is_422(client, known, top_k):
    response = client.get(f"/images/{known[0]}/similar?top_k={top_k}")
    assert response.status_code == 422, response.text
    assert any(e["loc"] == ["query", "top_k"] for e in response.json()["detail"])


BAD_IDS = {
    "traversal": "..%2F..%2Fetc%2Fpasswd",
    "traversal_double_encoded": "..%252F..%252Fetc%252Fpasswd",
    "short": "abc",
    "hex_65": "a" * 65,
    "hex_63": "a" * 63,
    "not_hex": "g" * 64,
    "nul": "%00",
    "uppercase_of_a_real_id": None,  # filled from `known`
}


@pytest.mark.parametrize("method_path", ["GET /images/{}", "DELETE /images/{}", "GET /images/{}/similar",
                                         "GET /images/{}/thumbnail"])
@pytest.mark.parametrize("case", list(BAD_IDS))
def test_malformed_image_id_is_404(known_on, case, method_path):
    client, real_id, real_data = known_on.client, known_on.id, known_on.data
    bad = BAD_IDS[case] or real_id.upper()
    method, path = method_path.split(" ")
    response = client.request(method, path.format(bad))
    assert response.status_code == 404, (method, path.format(bad), response.status_code, response.text)
    assert "detail" in response.json()
    assert client.get(f"/images/{real_id}").content == real_data  # nothing else affected


# --------------------------------------------------------------------------------------------- folder ingest


def test_ingest_is_refused_when_no_roots_are_configured(client, tmp_path):
    response = client.post("/ingest", json={"path": str(tmp_path)})
    assert response.status_code == 403 and "INGEST_ROOTS" in response.json()["detail"]


def test_ingest_outside_the_roots_is_403(limited):
    c, root = limited.client, limited.root
    for path in (str(limited.outside), "/etc", "/", f"{root}/../{limited.outside.name}", f"{root}/inside/../../.."):
        response = c.post("/ingest", json={"path": path})
        assert response.status_code == 403, (path, response.text)
        assert "not under an allowed ingest root" in response.json()["detail"], response.text
    response = c.post("/ingest", json={"path": f"{root}/inside\x00/etc"})
    assert response.status_code == 403 and "NUL" in response.json()["detail"]
    # control: a path under the root passes the check (and is then refused for not being a folder)
    response = c.post("/ingest", json={"path": str(root / "missing")})
    assert response.status_code == 404 and "not a folder" in response.json()["detail"]


def test_ingest_through_a_symlink_out_of_the_root_is_403(limited):
    link = limited.root / "link-out"
    assert link.is_symlink() and (link / "secret.jpg").is_file()
    for path in (str(link), str(link / "."), f"{link}/"):
        response = limited.client.post("/ingest", json={"path": path})
        assert response.status_code == 403, (path, response.text)
        assert "not under an allowed ingest root" in response.json()["detail"]


# --------------------------------------------------------------------------------------------- all at once


def test_zz_service_still_healthy_after_the_matrix(client, stack_settings):
    good = {
        "mix-good-1.jpg": jpeg(63_900),
        "mix-good-2.png": png(photo(63_901)),
        "mix-good-3.webp": encode(photo(63_902), "WEBP", quality=90),
    }
    bad_at_upload = {f"mix-{case}-{name}": (data, reason) for case, (name, data, reason) in NOT_IMAGES.items()}
    bad_in_worker = {"mix-cut.jpg": truncated("JPEG", 63_903), "mix-cut.png": truncated("PNG", 63_904)}
    files = []
    good_items, bad_items, cut_items = list(good.items()), list(bad_at_upload.items()), list(bad_in_worker.items())
    while good_items or bad_items or cut_items:  # interleaved
        for pool in (bad_items, good_items, cut_items):
            if pool:
                name, value = pool.pop(0)
                files.append((name, value[0] if isinstance(value, tuple) else value))
    body = upload(client, *files)
    entries = {e["filename"]: e for e in body["images"]}
    assert [e["filename"] for e in body["images"]] == [name for name, _ in files]
    for name, (_, reason) in bad_at_upload.items():
        assert entries[name]["status"] == "rejected" and reason in entries[name]["error"], entries[name]
    for name in [*good, *bad_in_worker]:
        assert entries[name]["status"] == "queued", entries[name]

    job = wait_job(client, body["job_id"])
    assert job["state"] == "completed_with_errors", job
    assert (job["total"], job["done"], job["failed"]) == (len(files), len(good), len(files) - len(good)), job
    errors = {e["filename"]: e["message"] for e in job["errors"]}
    assert set(errors) == {*bad_at_upload, *bad_in_worker}
    for name, (_, reason) in bad_at_upload.items():
        assert reason in errors[name], (name, errors[name])
    for name in bad_in_worker:
        assert "truncated" in errors[name], (name, errors[name])
        assert client.get(f"/images/{entries[name]['id']}").status_code == 404

    for name, data in good.items():
        hits = results(client, data, top_k=3, filename=name)
        assert (hits[0]["id"], hits[0]["filename"]) == (entries[name]["id"], name), hits
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert client.get(f"/images/{entries[name]['id']}").content == data

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["problems"] == [], health
    tmp_dir = stack_settings.images_dir / ".tmp"
    assert sorted(p.name for p in tmp_dir.iterdir()) == []  # no temporary file left behind
