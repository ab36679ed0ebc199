"""Metadata, collections, tags and filtered, paged search through the API, on a real stack per backend:
EXIF read by the worker at ingest, filters answered inside the vector database."""

from __future__ import annotations

import pytest

from scripts.photosets import real_photos
from scripts.synthetic import jpeg, jpeg_with_exif
from shared.imaging import load_image
from tests.test_pipeline_e2e import wait_job

TRIP = "Trip 2024 ñ"


def exif_jpeg(index: int, **exif) -> bytes:
    """A real photo (made small) with EXIF: capture time and offset, camera, GPS (`jpeg_with_exif`)."""
    photo = load_image(real_photos()[index]).image
    photo.thumbnail((320, 320))
    return jpeg_with_exif(photo, **exif)


@pytest.fixture(scope="module")
def client(backend_client):
    return backend_client[0]


@pytest.fixture(scope="module")
def library(client):
    """Three EXIF photos uploaded into TRIP, two plain images outside any collection; {name: id}."""
    # photos 6-8: test_pipeline_e2e (same stacks) uploads 0-5 and looks for copies of them
    trip = [("madrid.jpg", exif_jpeg(6)), ("sydney.jpg", exif_jpeg(7, when="2023:12:24 20:00:00", offset=None,
                                                                     make="Apple", model="iPhone 13",
                                                                     gps=(-33.8568, 151.2153))),
            ("nogps.jpg", exif_jpeg(8, gps=None, when="2019:07:14 09:00:00", offset="-05:00"))]
    plain = [("plain1.jpg", jpeg(901)), ("plain2.jpg", jpeg(902))]
    first = client.post("/images", files=[("files", f) for f in trip], data={"collection": TRIP})
    second = client.post("/images", files=[("files", f) for f in plain])
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    for response in (first, second):
        assert wait_job(client, response.json()["job_id"])["state"] == "completed"
    return {img["filename"]: img["id"] for r in (first, second) for img in r.json()["images"]}


def ids_of(response) -> set[str]:
    assert response.status_code == 200, response.text
    return {r["id"] for r in response.json()["results"]}


def search(client, data: bytes, **fields):
    return client.post("/search", files={"file": ("q.jpg", data)}, data={"top_k": "50", **fields})


def test_exif_metadata_is_stored_at_ingest(client, library):
    meta = client.get(f"/images/{library['madrid.jpg']}/metadata").json()
    assert meta["captured_at"].startswith("2021-05-01T12:30:00")  # 14:30 at +02:00
    assert (meta["camera_make"], meta["camera_model"]) == ("Canon", "Canon EOS 5D")
    assert meta["latitude"] == pytest.approx(40.4168, abs=1e-4)
    assert meta["longitude"] == pytest.approx(-3.7038, abs=1e-4)
    assert meta["collections"] == [TRIP] and meta["tags"] == [] and meta["format"] == "JPEG"
    sydney = client.get(f"/images/{library['sydney.jpg']}/metadata").json()
    assert sydney["captured_at"].startswith("2023-12-24T20:00:00")  # no offset: read as UTC
    plain = client.get(f"/images/{library['plain1.jpg']}/metadata").json()
    assert plain["captured_at"] is None and plain["latitude"] is None and plain["collections"] == []
    assert client.get("/images/" + "0" * 64 + "/metadata").status_code == 404


def test_filters_select_inside_the_search(client, library):
    query = jpeg(901)
    trip = {library[n] for n in ("madrid.jpg", "sydney.jpg", "nogps.jpg")}
    assert ids_of(search(client, query)) >= set(library.values())
    assert ids_of(search(client, query, collection=TRIP)) == trip
    assert ids_of(search(client, query, has_gps="true")) >= {library["madrid.jpg"], library["sydney.jpg"]}
    assert library["nogps.jpg"] not in ids_of(search(client, query, has_gps="true"))
    assert ids_of(search(client, query, collection=TRIP, camera="iPhone 13")) == {library["sydney.jpg"]}
    assert ids_of(search(client, query, collection=TRIP, captured_from="2021-01-01",
                         captured_to="2021-12-31")) == {library["madrid.jpg"]}
    assert ids_of(search(client, query, collection=TRIP, bbox="35,-10,45,5")) == {library["madrid.jpg"]}
    assert ids_of(search(client, query, collection=[TRIP, "no such album"])) == trip
    assert ids_of(search(client, query, collection="no such album")) == set()
    assert ids_of(search(client, query, format="PNG", collection=TRIP)) == set()
    best = search(client, query, min_score="0.999").json()["results"]
    assert [r["id"] for r in best] == [library["plain1.jpg"]]  # the query is that image


def test_results_carry_metadata_and_pages_follow_each_other(client, library):
    query = jpeg(901)
    everything = search(client, query).json()["results"]
    tile = next(r for r in everything if r["id"] == library["madrid.jpg"])
    assert tile["collections"] == [TRIP] and tile["captured_at"].startswith("2021-05-01")
    assert tile["camera"] == "Canon EOS 5D" and tile["has_gps"] is True
    pages, offset = [], 0
    while offset is not None:
        body = client.post("/search", files={"file": ("q.jpg", query)},
                           data={"top_k": "2", "offset": str(offset)}).json()
        pages += body["results"]
        offset = body["next_offset"]
        assert len(pages) <= len(everything)
    assert [r["id"] for r in pages] == [r["id"] for r in everything]


def test_similar_and_text_search_take_the_same_filters(client, library):
    similar = client.get(f"/images/{library['madrid.jpg']}/similar", params={"collection": TRIP, "top_k": 10})
    assert ids_of(similar) == {library["sydney.jpg"], library["nogps.jpg"]}
    health = client.get("/health").json()
    if health["capabilities"]["text_search"]:
        text = client.post("/search/text", json={"text": "a photo", "top_k": 10, "collection": [TRIP],
                                                 "has_gps": False})
        assert ids_of(text) == {library["nogps.jpg"]}


def test_collections_and_tags_change_without_re_embedding(client, library):
    vectors = client.get("/health").json()["vectors"]
    image = library["plain2.jpg"]
    created = client.post("/collections", json={"name": "Best of", "description": "the keepers"})
    assert created.status_code == 201 and created.json()["name"] == "Best of"
    assert client.post("/collections", json={"name": "Best of"}).status_code == 200
    assert client.put(f"/images/{image}/collections/Best of").json()["collections"] == ["Best of"]
    assert client.put(f"/images/{image}/collections/Best of").json()["collections"] == ["Best of"]  # idempotent
    tagged = client.patch(f"/images/{image}", json={"tags": ["sea", "sun"], "add_tags": ["blue"]}).json()
    assert tagged["tags"] == ["sea", "sun", "blue"]
    assert client.patch(f"/images/{image}", json={"remove_tags": ["sun"]}).json()["tags"] == ["sea", "blue"]
    query = jpeg(902)
    assert ids_of(search(client, query, tag=["sea", "blue"])) == {image}
    assert ids_of(search(client, query, tag=["sea", "sun"])) == set()
    assert ids_of(search(client, query, any_tag=["sun", "blue"])) == {image}
    albums = {c["name"]: c for c in client.get("/collections").json()["collections"]}
    assert albums["Best of"]["images"] == 1 and albums["Best of"]["description"] == "the keepers"
    assert albums[TRIP]["images"] == 3
    assert client.delete(f"/images/{image}/collections/Best of").json()["collections"] == []
    assert client.put("/images/" + "0" * 64 + "/collections/Best of").status_code == 404
    assert client.get("/health").json()["vectors"] == vectors


def test_an_upload_of_an_indexed_image_adds_it_to_the_collection(client, library):
    vectors = client.get("/health").json()["vectors"]
    again = client.post("/images", files=[("files", ("copy.jpg", jpeg(901)))], data={"collection": "Again"})
    assert again.json()["images"][0]["status"] == "duplicate"
    wait_job(client, again.json()["job_id"])
    assert client.get(f"/images/{library['plain1.jpg']}/metadata").json()["collections"] == ["Again"]
    assert client.get("/health").json()["vectors"] == vectors


@pytest.mark.parametrize(("fields", "named"), [
    ({"captured_from": "yesterday"}, "captured_from"),
    ({"bbox": "1,2,3"}, "bbox"),
    ({"bbox": "50,0,40,10"}, "bbox"),
    ({"offset": "995", "top_k": "10"}, "offset + top_k"),
    ({"min_score": "2"}, "min_score"),
    ({"min_width": "-1"}, "min_width"),
    ({"collection": "x" * 65}, "collection"),
    ({"captured_from": "2024-02-01", "captured_to": "2024-01-01"}, "captured_from"),
])
def test_invalid_filters_are_422_naming_the_field(client, library, fields, named):
    response = search(client, jpeg(901), **fields)
    assert response.status_code == 422, response.text
    assert named in str(response.json()["detail"]), response.json()
