"""The Gradio page, driven in headless Chromium (Debian's `chromium`, through Playwright) against real API
processes: mounted at /ui, and standalone (`python -m ui --api URL`). Plus its service layer and texts."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from scripts.devservices import (
    REPO,
    Api,
    Worker,
    child_env,
    create_database,
    free_port,
    stop,
    wait_for,
    write_tiny_model,
)
from scripts.synthetic import encode, jpeg, photo
from shared.duplicates import DEFAULT_THRESHOLD
from shared.embedder import identify, settings_for
from shared.imagestore import image_id_of
from shared.services import Proxima
from shared.types import Job, JobState, ModelInfo
from tests.conftest import _settings, _stack_env
from ui import render
from ui.service import LocalService, Query, RemoteService, ServiceError
from ui.text import TEXTS, language

OUTPUT = Path(os.environ.get("PROXIMA_TEST_OUTPUT", REPO / "test-output"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FILENAMES = [f"page-{n}.jpg" for n in range(6)]
SEED = 61_000  # the stack is shared with other tests: seeds no other test uses
TRIP = "Trip 2024"


def dated_jpeg(seed: int, taken: str, quality: int = 90) -> bytes:
    """A JPEG whose EXIF says when it was taken (`2024:06:30 12:00:00`, as cameras write it)."""
    exif = Image.Exif()
    exif[0x0132] = taken  # DateTime
    exif.get_ifd(0x8769)[0x9003] = taken  # DateTimeOriginal
    return encode(photo(seed), "JPEG", quality=quality, exif=exif)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ui-roots")
    (root / "album").mkdir()
    for n in range(3):
        (root / "album" / f"folder-{n}.jpg").write_bytes(jpeg(SEED + 100 + n))
    (root / "album" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def api(stack_env, worker, roots, tmp_path_factory):
    server = Api({**stack_env, "INGEST_ROOTS": str(roots)}, tmp_path_factory.mktemp("logs") / "ui-api.log")
    files = [("files", (name, jpeg(SEED + n))) for n, name in enumerate(FILENAMES)]
    job_id = httpx.post(f"{server.url}/images", files=files, timeout=30).json()["job_id"]
    wait_for(lambda: httpx.get(f"{server.url}/jobs/{job_id}").json()["state"] == "completed", 60, "indexing")
    yield server
    server.stop()


@contextlib.contextmanager
def standalone_ui(api_url: str, log_path: Path) -> Iterator[str]:
    """`python -m ui --api URL` on its own port; yields the page's URL."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ui", "--api", api_url, "--port", str(port)], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, env=child_env())
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_for(lambda: httpx.get(url, timeout=5).status_code == 200, 90, "standalone UI")
            yield url
        finally:
            stop(proc)


@pytest.fixture(scope="module")
def standalone(api, tmp_path_factory):
    with standalone_ui(api.url, tmp_path_factory.mktemp("logs") / "ui.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


def open_page(browser, url: str, locale: str = "en-US"):
    page = browser.new_page(locale=locale, viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(url)
    page.wait_for_selector("#px-query-image")
    return page


def message(page) -> str:
    return page.locator("#px-search-message").inner_text()


@pytest.mark.parametrize("where", ["mounted", "standalone"])
def test_search_by_upload_shows_the_same_image_first(browser, api, request, where, tmp_path):
    url = f"{api.url}/ui/" if where == "mounted" else request.getfixturevalue("standalone")
    query = tmp_path / "query.jpg"
    query.write_bytes(jpeg(SEED + 2))  # the same bytes as page-2.jpg
    expected_id = httpx.post(f"{api.url}/search", files={"file": query.read_bytes()}).json()["results"][0]["id"]
    page = open_page(browser, url)
    started = time.perf_counter()
    page.locator("#px-query-image input[type=file]").set_input_files(str(query))
    page.wait_for_selector("#px-results img")
    shown_after = time.perf_counter() - started
    first = page.locator("#px-results img").first
    assert first.get_attribute("alt").endswith("· page-2.jpg")
    assert first.get_attribute("alt").startswith(("1.000", "0.99"))
    assert expected_id in first.get_attribute("src")  # the tile is that image's thumbnail
    assert page.locator("#px-results img").count() >= len(FILENAMES)
    assert "results in" in message(page)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"ui-search-{where}.png"), full_page=True)
    print(f"{where}: gallery shown {shown_after:.2f} s after the upload")
    page.close()


def test_clicking_a_result_shows_more_like_it(browser, api):
    page = open_page(browser, f"{api.url}/ui/")
    page.locator("#px-query-text textarea").fill("colourful shapes")
    page.locator("#px-search-text").click()
    page.wait_for_selector("#px-results img")
    first = page.locator("#px-results img").first
    clicked_name = first.get_attribute("alt").rsplit(" · ", 1)[1]  # the filename is last
    clicked_id = re.search(r"([0-9a-f]{64})-\d+\.webp", first.get_attribute("src")).group(1)
    first.click()
    page.wait_for_function("document.querySelector('#px-search-message').innerText.includes('images like')")
    assert clicked_name in message(page)
    sources = [img.get_attribute("src") for img in page.locator("#px-results img").all()]
    assert sources and not any(clicked_id in src for src in sources)  # the image itself is left out
    page.close()


def captions(page) -> list[str]:
    return [img.get_attribute("alt") for img in page.locator("#px-results img").all()]


def wait_for_tiles(page, n: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('#px-results img').length === {n}")


def test_collection_filter_dates_in_captions_and_more_results(browser, api, tmp_path):
    trip = []
    for n in range(3):  # taken on 28, 29 and 30 June 2024; the module's other images have no date nor collection
        trip.append(tmp_path / f"trip-{n}.jpg")
        trip[-1].write_bytes(dated_jpeg(SEED + 300 + n, f"2024:06:{28 + n} 12:00:00"))
    page = open_page(browser, f"{api.url}/ui/")
    page.get_by_role("tab", name="Add images").click()
    page.locator("#px-upload-files input[type=file]").set_input_files([str(p) for p in trip])
    page.locator("#px-upload-files").get_by_text("trip-2", exact=True).wait_for()
    picker = page.locator("#px-upload-collection input")
    picker.fill(TRIP)  # a new collection, typed
    picker.press("Enter")
    page.locator("#px-upload").click()
    done = page.wait_for_selector("#px-job-progress .px-progress[data-state=completed]")
    assert done.get_attribute("data-done") == "3"

    page.get_by_role("tab", name="Search").click()
    page.locator("#px-filters").get_by_text("Filters").click()
    page.locator("#px-filter-collections input").click()  # the new collection is offered now
    page.get_by_role("option", name=TRIP, exact=True).click()
    page.keyboard.press("Escape")
    page.locator("#px-top-k input[type=number]").fill("2")
    page.locator("#px-top-k input[type=number]").press("Enter")
    page.locator("#px-query-text textarea").fill("colourful shapes")
    page.locator("#px-search-text").click()
    wait_for_tiles(page, 2)
    assert "2 results in" in message(page)
    dated = re.compile(r"^[-0-9.]+ · 2024-06-(28|29|30) · Trip 2024 · trip-[0-2]\.jpg$")
    assert all(dated.match(c) for c in captions(page)), captions(page)
    more = page.locator("#px-more")
    assert more.is_visible()
    more.click()  # the third (last) image of the collection is added under the first two
    wait_for_tiles(page, 3)
    assert "1 more in" in message(page)
    assert sorted(c.rsplit(" · ", 1)[1] for c in captions(page)) == ["trip-0.jpg", "trip-1.jpg", "trip-2.jpg"]
    page.wait_for_selector("#px-more", state="hidden")  # no further page
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "ui-search-filters.png"), full_page=True)

    page.locator("#px-results img").first.click()  # more like this, among the same collection
    page.wait_for_function("document.querySelector('#px-search-message').innerText.includes('images like')")
    wait_for_tiles(page, 2)
    assert all(dated.match(c) for c in captions(page)), captions(page)

    page.locator("#px-captured-from input").fill("2024-06-29")
    page.locator("#px-search-text").click()
    page.wait_for_function("document.querySelector('#px-search-message').innerText.includes('results in')")
    wait_for_tiles(page, 2)
    assert sorted(c.rsplit(" · ", 1)[1] for c in captions(page)) == ["trip-1.jpg", "trip-2.jpg"]

    page.locator("#px-captured-from input").fill("29/06/2024")
    page.locator("#px-search-text").click()
    shown = page.wait_for_selector("#px-search-message .px-error").inner_text()
    assert "That did not work" in shown and "captured_from" in shown and "Traceback" not in shown
    assert page.locator("#px-results img").count() == 0
    assert not page.locator("#px-more").is_visible()
    page.close()


def test_upload_tab_follows_the_job_and_lists_errors(browser, api, tmp_path):
    good, bad = tmp_path / "new-photo.jpg", tmp_path / "letter.jpg"
    good.write_bytes(jpeg(SEED + 200))
    bad.write_text("Dear operator, this is not a photo.")
    page = open_page(browser, f"{api.url}/ui/")
    page.get_by_role("tab", name="Add images").click()
    page.locator("#px-upload-files input[type=file]").set_input_files([str(good), str(bad)])
    page.locator("#px-upload-files").get_by_text("letter", exact=True).wait_for()  # name and extension are shown apart
    page.locator("#px-upload").click()
    done = page.wait_for_selector("#px-job-progress .px-progress[data-state=completed_with_errors]")
    assert (done.get_attribute("data-done"), done.get_attribute("data-failed")) == ("1", "1")
    assert page.locator("#px-job-progress progress").get_attribute("value") == "2"
    errors = page.locator("#px-job-errors").inner_text()
    assert "letter.jpg" in errors and "plain text" in errors
    for button in ("pause", "resume", "cancel"):  # shown with the job, of no use once it is finished
        page.wait_for_selector(f"#px-job-{button}:disabled")
    page.close()


def test_folder_ingest_from_the_page(browser, api, roots):
    page = open_page(browser, f"{api.url}/ui/")
    page.get_by_role("tab", name="Add images").click()
    page.locator("#px-folder textarea, #px-folder input").first.fill("/etc")
    page.locator("#px-ingest-folder").click()
    refused = page.wait_for_selector("#px-job-progress .px-error")
    assert "Not allowed" in refused.inner_text() and "Traceback" not in refused.inner_text()
    page.locator("#px-folder textarea, #px-folder input").first.fill(str(roots / "album"))
    page.locator("#px-ingest-folder").click()
    done = page.wait_for_selector("#px-job-progress .px-progress[data-state=completed]")
    assert done.get_attribute("data-done") == "3"
    assert "1 skipped" in done.inner_text()
    page.wait_for_selector("#px-job-pause:disabled")
    page.close()


def open_job(api_url: str, label: str) -> str:
    """An open job (`POST /jobs`): nothing happens to it until images are added or it is sealed."""
    return httpx.post(f"{api_url}/jobs", json={"label": label}, timeout=30).json()["job_id"]


def job_row(page, job_id: str, state: str | None = None):
    """The jobs tab's row of a job (in `state`, waited for: the table is redrawn after each click)."""
    return page.wait_for_selector(f'#px-jobs tr[data-job="{job_id}"]' + (f"[data-state={state}]" if state else ""))


def pick(page, job_id: str) -> None:
    """Click a job's row: its id goes into the job field."""
    job_row(page, job_id).click()
    field = "#px-jobs-pick input, #px-jobs-pick textarea"
    page.wait_for_function(f"document.querySelector('{field}').value === '{job_id}'")


@pytest.mark.parametrize(("where", "seed"), [("mounted", SEED + 600), ("standalone", SEED + 610)])
def test_jobs_tab_lists_pauses_resumes_and_cancels_jobs(browser, api, request, where, seed):
    url = f"{api.url}/ui/" if where == "mounted" else request.getfixturevalue("standalone")
    total = httpx.get(f"{api.url}/jobs", params={"limit": 1}).json()["total"]
    for n in range(max(0, 21 - total)):  # more than a page of jobs: empty ones, sealed (completed) at once
        httpx.post(f"{api.url}/jobs/{open_job(api.url, f'filler-{n}')}/seal", timeout=30)
    first, second = open_job(api.url, f"first-{where}"), open_job(api.url, f"second-{where}")  # the newest two

    page = open_page(browser, url)
    page.get_by_role("tab", name="Jobs").click()
    line = page.wait_for_selector('.px-jobs-page[data-offset="0"]')
    assert line.inner_text().startswith("Jobs 1–20 of ") and int(line.get_attribute("data-total")) >= 23
    row = job_row(page, first, "queued")
    assert "folder" in row.inner_text() and f"first-{where}" in row.inner_text()
    head = page.locator("#px-jobs thead").inner_text()
    assert all(word in head for word in ("Kind", "State", "Done / total", "Rate", "Time left", "Started"))
    page.locator("#px-jobs-next").click()  # the older jobs, then back
    page.wait_for_selector('.px-jobs-page[data-offset="20"]')
    assert page.locator(f'#px-jobs tr[data-job="{first}"]').count() == 0
    page.locator("#px-jobs-prev").click()
    page.wait_for_selector('.px-jobs-page[data-offset="0"]')

    pick(page, first)
    page.locator("#px-jobs-pause").click()
    row = job_row(page, first, "paused")
    cells = row.query_selector_all("td")
    assert cells[1].inner_text() == "paused" and cells[5].inner_text() == "—"  # a paused job has no time left
    assert "is paused" in page.locator("#px-jobs-message").inner_text()
    assert httpx.get(f"{api.url}/jobs/{first}").json()["state"] == "paused"
    page.locator("#px-jobs-resume").click()
    job_row(page, first, "queued")  # as it was: nothing added to it yet
    assert "goes on: queued" in page.locator("#px-jobs-message").inner_text()

    pick(page, second)
    page.locator("#px-jobs-pause").click()
    job_row(page, second, "paused")
    files = [("files", (f"held-{n}.jpg", jpeg(seed + n))) for n in range(3)]  # parked by the worker: paused
    httpx.post(f"{api.url}/images", data={"job_id": second}, files=files, timeout=30).raise_for_status()
    page.locator("#px-jobs-refresh").click()
    page.wait_for_selector(f'#px-jobs tr[data-job="{second}"][data-state=paused][data-total="3"]')
    page.locator("#px-jobs-cancel").click()
    row = job_row(page, second, "cancelled")
    assert (row.get_attribute("data-done"), row.get_attribute("data-dropped")) == ("0", "3")
    assert "cancelled · 3 dropped" in row.inner_text()
    assert "0 done, 0 failed, 3 dropped" in page.locator("#px-jobs-message").inner_text()
    assert httpx.get(f"{api.url}/jobs/{second}").json()["dropped"] == 3
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"ui-jobs-{where}.png"), full_page=True)

    page.locator("#px-jobs-pause").click()  # a cancelled job is final
    refused = page.wait_for_selector("#px-jobs-message .px-error").inner_text()
    assert f"job {second} is cancelled: it cannot be paused any more" in refused and "Traceback" not in refused
    page.locator("#px-jobs-pick input, #px-jobs-pick textarea").first.fill("no-such-job")
    page.locator("#px-jobs-cancel").click()
    page.wait_for_function("document.querySelector('#px-jobs-message').innerText.includes('Not found')")
    httpx.post(f"{api.url}/jobs/{first}/seal", timeout=30)  # completes: nothing was added to it
    page.close()


def test_status_tab_and_spanish_labels(browser, api):
    page = open_page(browser, f"{api.url}/ui/", locale="es-ES")
    assert page.locator("#px-search-image").inner_text() == "Buscar por imagen"
    page.get_by_role("tab", name="Estado").click()
    status = page.locator("#px-status")
    page.wait_for_function("document.querySelector('#px-status').innerText.includes('pgvector')")
    text = status.inner_text()
    assert "Imágenes indexadas" in text and "Flower" in text
    assert page.locator("#px-status a").first.get_attribute("href").endswith(":5555/")
    health = httpx.get(f"{api.url}/health").json()
    slug = next(m["slug"] for m in health["models"] if m["state"] == "active")
    row = page.wait_for_selector(f'#px-models tr[data-slug="{slug}"][data-state=active]')
    assert row.query_selector(".px-vectors").inner_text() == str(health["vectors"])  # the images of this module
    assert "activo" in row.inner_text() and "Vectores" in page.locator("#px-models").inner_text()
    page.locator("#px-activate").click()  # nothing chosen
    page.wait_for_function("document.querySelector('#px-activate-message').innerText.includes('Primero elige')")
    page.close()


@pytest.fixture(scope="module")
def switch_stack(redis_url, pg_url, tiny_model, tmp_path_factory):
    """A stack of its own (Redis database 7, a PostgreSQL database of its own) whose model the test switches:
    the shared stack's active model must not change under the other tests. Yields (settings, API)."""
    env = _stack_env(tmp_path_factory, redis_url, tiny_model, 7, vector_backend="pgvector",
                     database_url=create_database(pg_url, "ui_model_switch"))
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    logs = tmp_path_factory.mktemp("logs")
    with ThreadPoolExecutor(1) as pool:  # both start at once, as `make up` starts them (schema changes are locked)
        starting = pool.submit(Worker, env, logs / "ui-switch-worker.log")
        try:
            server = Api(env, logs / "ui-switch-api.log")
        except BaseException:
            with contextlib.suppress(Exception):
                starting.result().stop()
            raise
        try:
            worker = starting.result()
        except BaseException:
            server.stop()
            raise
    yield _settings(env), server
    server.stop()
    worker.stop()


def test_status_tab_follows_a_reembed_refuses_it_incomplete_and_activates_it(browser, switch_stack, tmp_path):
    settings, server = switch_stack
    files = [("files", (f"switch-{n}.jpg", jpeg(SEED + 400 + n))) for n in range(4)]
    upload = httpx.post(f"{server.url}/images", files=files, timeout=30).json()["job_id"]
    wait_for(lambda: httpx.get(f"{server.url}/jobs/{upload}").json()["state"] == "completed", 60, "indexing")
    config, checkpoint = write_tiny_model(tmp_path / "model-b", seed=11)  # the same architecture, other weights
    model_b = identify(settings_for(settings, ModelInfo(str(config), str(checkpoint), 0)))
    proxima = Proxima.from_settings(settings)  # no model needed: it only queues the re-embed
    try:
        first = proxima.catalog.active(fresh=True)
        assert first is not None and first.slug != model_b.slug
        job_id, entry = proxima.begin_reembed(model_b)  # its index and an open job; nothing queued yet
        page = open_page(browser, f"{server.url}/ui/")
        page.get_by_role("tab", name="Status").click()
        active = page.wait_for_selector(f'#px-models tr[data-slug="{first.slug}"][data-state=active]')
        assert active.query_selector(".px-vectors").inner_text() == "4"
        building = page.wait_for_selector(f'#px-models tr[data-slug="{entry.slug}"][data-state=building]')
        assert building.query_selector(".px-vectors").inner_text() == "0"
        assert building.query_selector(".px-progress").get_attribute("data-done") == "0"
        assert "still going through the stored images" in building.inner_text()

        page.locator("#px-activate-slug input").click()
        page.get_by_role("option", name=f"{entry.slug} · building", exact=True).click()
        page.locator("#px-activate").click()
        refused = page.wait_for_selector("#px-activate-message .px-error").inner_text()
        assert "not complete" in refused and "4 missing" in refused and "Traceback" not in refused
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUTPUT / "ui-status-reembed.png"), full_page=True)
        with pytest.raises(ServiceError) as exc:  # the same refusal over HTTP (the page run on its own)
            RemoteService(server.url).activate(entry.slug)
        assert exc.value.kind == "bad_input" and "not complete" in exc.value.detail and "409" in exc.value.detail

        assert entry.slug in page.locator("#px-reembed-label").inner_text()  # its buttons, under the table
        page.locator("#px-reembed-pause").click()
        paused = page.wait_for_selector(f'#px-models tr[data-slug="{entry.slug}"] .px-progress[data-state=paused]')
        assert "Paused: no new batch starts" in paused.inner_text() and "left" not in paused.inner_text()
        assert f"Job {job_id} is paused" in page.locator("#px-reembed-message").inner_text()
        page.wait_for_selector("#px-reembed-resume:enabled")
        assert page.locator("#px-reembed-pause").is_disabled()
        page.locator("#px-reembed-resume").click()
        page.wait_for_selector(f'#px-models tr[data-slug="{entry.slug}"] .px-progress[data-state=queued]')

        proxima.reembed_walk(entry, job_id)  # the 4 stored images go to the worker; the job is sealed
        # nobody clicks: the tab refreshes itself while the re-embed runs
        done = page.wait_for_selector(f'#px-models tr[data-slug="{entry.slug}"] .px-progress[data-state=completed]',
                                      timeout=90_000)
        assert (done.get_attribute("data-done"), done.get_attribute("data-total")) == ("4", "4")
        assert page.locator(f'#px-models tr[data-slug="{entry.slug}"] .px-vectors').inner_text() == "4"

        page.locator("#px-activate").click()  # the choice is kept across refreshes
        page.wait_for_selector(f'#px-models tr[data-slug="{entry.slug}"][data-state=active]')
        assert "is now the active model" in page.locator("#px-activate-message").inner_text()
        assert page.locator(f'#px-models tr[data-slug="{first.slug}"]').get_attribute("data-state") == "retired"
        page.screenshot(path=str(OUTPUT / "ui-status-models.png"), full_page=True)
        assert [m["slug"] for m in RemoteService(server.url).models() if m["state"] == "active"] == [entry.slug]
        page.close()
    finally:
        proxima.close()


def test_an_image_only_model_hides_the_text_search_and_says_why(browser, efficientnet_env, efficientnet_worker,
                                                                 tmp_path_factory):
    server = Api(efficientnet_env, tmp_path_factory.mktemp("logs") / "ui-api-efficientnet.log")
    try:
        page = open_page(browser, f"{server.url}/ui/")
        note = page.wait_for_selector("#px-text-off p")
        assert "image-only" in note.inner_text() and "EXTRACTOR=efficientnet_lite" in note.inner_text()
        assert not page.locator("#px-query-text").is_visible()
        assert not page.locator("#px-search-text").is_visible()
        assert page.locator("#px-search-image").is_visible()
        page.close()
    finally:
        server.stop()


def test_api_down_is_a_readable_message_in_the_page(browser, tmp_path):
    with standalone_ui(f"http://127.0.0.1:{free_port()}", tmp_path / "ui.log") as url:  # nothing listens there
        page = open_page(browser, url)
        page.locator("#px-query-text textarea").fill("a dog on a beach")
        page.locator("#px-search-text").click()
        shown = page.wait_for_selector("#px-search-message .px-error").inner_text()
        assert "A service is down" in shown and "does not answer" in shown and "Traceback" not in shown
        assert page.locator("#px-results img").count() == 0
        page.close()


def test_remote_service_maps_api_errors(api):
    remote = RemoteService(api.url)
    cases = {
        "bad_input": lambda: remote.search_image(b"<html>no</html>", 3),
        "not_found": lambda: remote.similar("0" * 64, 3),
        "forbidden": lambda: remote.ingest_folder("/etc", True),
        "bad_input ": lambda: remote.find_duplicates(1.5),  # a cosine is at most 1
        "not_found ": lambda: remote.resolve_duplicates("0" * 64, ["1" * 64], []),  # no such group
    }
    for kind, call in cases.items():
        with pytest.raises(ServiceError) as exc:
            call()
        assert exc.value.kind == kind.strip(), exc.value.detail
    with pytest.raises(ServiceError) as exc:
        remote.search_text("shapes", 2, Query({"captured_from": "yesterday"}))
    assert exc.value.kind == "bad_input" and "ISO 8601" in exc.value.detail
    first = remote.search_text("shapes", 2)
    assert first.results[0].image.startswith(f"{api.url}/images/") and first.next_offset == 2
    second = remote.search_text("shapes", 2, Query(offset=first.next_offset))
    assert len(second.results) == 2 and not {r.id for r in first.results} & {r.id for r in second.results}
    assert remote.similar(first.results[0].id, 3, Query({"collection": ["no such album"]})).results == []
    assert isinstance(remote.collections(), list)
    assert remote.status()["backend"] == "pgvector"
    assert [m["state"] for m in remote.models()].count("active") == 1
    with pytest.raises(ServiceError) as exc:
        remote.activate("no_such_model_00000000")
    assert exc.value.kind == "not_found" and "no model index" in exc.value.detail
    total, jobs = remote.jobs(0, 5)
    assert total >= len(jobs) >= 1
    assert [j.created_at for j in jobs] == sorted((j.created_at for j in jobs), reverse=True)  # the newest first
    done = next(j for j in remote.jobs(0, 200)[1] if j.state is JobState.COMPLETED)
    with pytest.raises(ServiceError) as exc:
        remote.pause(done.job_id)
    assert exc.value.kind == "bad_input" and "is completed: it cannot be paused any more" in exc.value.detail
    for call in (remote.pause, remote.resume, remote.cancel):
        with pytest.raises(ServiceError) as exc:
            call("0" * 32)
        assert exc.value.kind == "not_found"
    with pytest.raises(ServiceError) as exc:  # a typed id stays one path segment: no other route is reached
        remote.cancel("../../admin/duplicates")
    assert exc.value.kind == "not_found"
    job_id = open_job(api.url, "remote controls")
    assert remote.pause(job_id).state is JobState.PAUSED
    assert remote.resume(job_id).state is JobState.QUEUED
    cancelled = remote.cancel(job_id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished and cancelled.remaining == 0


def test_local_service_calls_the_api_services(client):
    local = LocalService(lambda: client.app.state.proxima)
    with pytest.raises(ServiceError) as exc:
        local.search_image(b"GIF89a-truncated", 3)
    assert exc.value.kind == "bad_input"
    with pytest.raises(ServiceError) as exc:
        local.search_text("   ", 3)
    assert exc.value.kind == "bad_input" and "empty" in exc.value.detail
    with pytest.raises(ServiceError) as exc:
        local.search_text("shapes", 3, Query({"captured_to": "30/06/2024"}))
    assert exc.value.kind == "bad_input" and "captured_to" in exc.value.detail
    with pytest.raises(ServiceError) as exc:
        local.search_text("shapes", 3, Query({"min_score": 5.0}))
    assert exc.value.kind == "bad_input" and "min_score" in exc.value.detail
    with pytest.raises(ServiceError) as exc:
        local.ingest_folder("/tmp", True, "Trip")  # INGEST_ROOTS is empty in this stack
    assert exc.value.kind == "forbidden"
    assert isinstance(local.collections(), list)
    assert local.status()["model"]["dim"] == 64
    active = [m for m in local.models() if m["state"] == "active"]
    assert len(active) == 1 and active[0]["dim"] == 64
    local.activate(active[0]["slug"])  # the active one: nothing to do
    with pytest.raises(ServiceError) as exc:
        local.activate("no_such_model_00000000")
    assert exc.value.kind == "not_found"
    with pytest.raises(ServiceError) as exc:
        local.find_duplicates(0.0)  # nothing is started
    assert exc.value.kind == "bad_input" and "threshold" in exc.value.detail
    with pytest.raises(ServiceError) as exc:
        local.resolve_duplicates("0" * 64, ["1" * 64], [])
    assert exc.value.kind == "not_found" and "no duplicate group" in exc.value.detail
    total, groups = local.duplicates(0, 5)
    assert total >= len(groups) and all(g.members[0].keeper and g.members[0].id == g.id for g in groups)
    job_id = client.post("/jobs", json={"label": "local controls"}).json()["job_id"]
    total, jobs = local.jobs(0, 5)
    assert jobs[0].job_id == job_id and total >= 1 and jobs[0].errors == ()
    assert local.pause(job_id).state is JobState.PAUSED
    assert local.resume(job_id).state is JobState.QUEUED
    assert local.cancel(job_id).state is JobState.CANCELLED
    with pytest.raises(ServiceError) as exc:
        local.resume(job_id)
    assert exc.value.kind == "bad_input" and "cancelled: it cannot be resumed any more" in exc.value.detail
    with pytest.raises(ServiceError) as exc:
        local.pause("0" * 32)
    assert exc.value.kind == "not_found"


@pytest.mark.parametrize(("header", "lang"), [
    ("es-ES,es;q=0.9,en;q=0.8", "es"), ("en-GB,en;q=0.9,es;q=0.8", "en"), ("fr-FR,es;q=0.5,en;q=0.4", "es"),
    ("de-DE", "en"), ("", "en"), (None, "en"), ("en;q=0.2,es;q=0.8", "es"), ("es;q=bogus,en", "en"),
])
def test_language_from_accept_language(header, lang):
    assert language(header) == lang


def test_both_languages_have_every_text():
    assert TEXTS["en"].keys() == TEXTS["es"].keys()


def test_progress_of_a_paused_and_a_cancelled_job():
    paused = Job("a" * 32, "folder", JobState.PAUSED, total=10, done=4, rate_per_s=2.0, path="/photos", walking=True)
    shown = render.progress("en", paused)
    assert 'data-state="paused"' in shown and "4 indexed, 0 failed of 10" in shown
    assert "Paused: no new batch starts until it is resumed" in shown
    assert "left" not in shown and "still walking" not in shown  # it waits: no time left, no walk going on
    assert "En pausa: no empieza" in render.progress("es", paused)
    cancelled = Job("b" * 32, "upload", JobState.CANCELLED, total=10, done=3, failed=1)
    shown = render.progress("en", cancelled)
    assert 'data-state="cancelled"' in shown and 'data-dropped="6"' in shown
    assert "cancelled. 3 indexed, 1 failed of 10" in shown and "6 not processed (dropped)" in shown
    run = Job("c" * 32, "duplicates", JobState.CANCELLED, total=50, done=20)
    assert "30 images not searched" in render.progress("en", run)


def test_jobs_table_rows():
    jobs = [Job("a" * 32, "folder", JobState.RUNNING, total=10, done=4, failed=1, rate_per_s=2.5, eta_s=150,
                path="/photos/2024", walking=True, created_at=1_719_748_800.0, started_at=1_719_748_805.0),
            Job("b" * 32, "reembed", JobState.PAUSED, total=8, done=2, rate_per_s=1.0, path="open_clip: ViT"),
            Job("c" * 32, "duplicates", JobState.CANCELLED, total=50, done=20)]
    shown = render.jobs_table("en", 20, 23, jobs, picked="b" * 32)
    assert 'data-offset="20" data-total="23">Jobs 21–23 of 23<' in shown
    running, paused, cancelled = shown.split("<tr ")[1:]
    assert ">folder<" in running and ">4 / 10…<" in running and ">2.5<" in running and ">2 min 30 s<" in running
    assert "2024-06-30 12:00:05" in running and "/photos/2024" in running
    assert 'aria-selected="true"' in paused and ">paused<" in paused and ">—<" in paused and "not yet" in paused
    assert 'data-dropped="30"' in cancelled and "cancelled · 30 dropped" in cancelled
    assert "reindexado" in render.jobs_table("es", 0, 3, jobs) and "No jobs yet" in render.jobs_table("en", 0, 0, [])


def test_random_weights_warning_is_on_the_status():
    health = {"backend": "pgvector", "model": {"name": "ViT-B-32", "pretrained": "random", "dim": 512,
                                                "random": True}, "vectors": 0, "queue_depth": 0, "problems": []}
    assert "random weights" in render.status("en", health, None)
    assert "pesos aleatorios" in render.status("es", health, None)


# With the tiny random model every picture scores 0.96 to 0.998 against every other; copies of one picture
# (another JPEG quality, half the size) score 0.9999 and more: this threshold keeps only the copies.
DUPLICATE_THRESHOLD = "0.9995"


def near_duplicates(seed: int) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Two pictures as the files of a camera roll gone through a few apps: (the first picture's copies, the
    second's), by filename, the suggested keeper first (the most pixels, then the largest file)."""
    first = photo(seed)
    kept = {f"dup-{seed}-a.jpg": encode(first, "JPEG", quality=95),
            f"dup-{seed}-a-q60.jpg": encode(first, "JPEG", quality=60),
            f"dup-{seed}-a-small.jpg": encode(first.resize((160, 120)), "JPEG", quality=95)}
    dated = {f"dup-{seed}-b.jpg": dated_jpeg(seed + 1, "2024:06:30 12:00:00", quality=92),
             f"dup-{seed}-b-q70.jpg": dated_jpeg(seed + 1, "2024:07:02 09:30:00", quality=70)}
    return kept, dated


def thumbnail_status(api_url: str, image_id: str) -> int:
    return httpx.get(f"{api_url}/images/{image_id}/thumbnail", timeout=30).status_code


def show_group(page, group_id: str, offset: int):
    """The duplicates tab's row of a group, on the page of groups from `offset` (other images of the shared
    stack may group too, so it need not be on the first page): "Next"/"Previous groups" until it is drawn."""
    shown = int(page.wait_for_selector(".px-dup-page").get_attribute("data-offset"))
    while shown != offset:
        step = 10 if shown < offset else -10
        page.locator("#px-dup-next" if step > 0 else "#px-dup-prev").click()
        shown += step
        page.wait_for_selector(f'.px-dup-page[data-offset="{shown}"]')
    return page.wait_for_selector(f"#px-dup-{group_id}")


@pytest.mark.parametrize(("where", "seed"), [("mounted", SEED + 500), ("standalone", SEED + 510)])
def test_duplicates_tab_finds_groups_deletes_the_rest_and_keeps_all(browser, api, request, where, seed):
    url = f"{api.url}/ui/" if where == "mounted" else request.getfixturevalue("standalone")
    kept, dated = near_duplicates(seed)
    files = [("files", (name, data)) for name, data in {**kept, **dated}.items()]
    job_id = httpx.post(f"{api.url}/images", files=files, timeout=30).json()["job_id"]
    wait_for(lambda: httpx.get(f"{api.url}/jobs/{job_id}").json()["state"] == "completed", 60, "indexing")
    a_ids, b_ids = [image_id_of(d) for d in kept.values()], [image_id_of(d) for d in dated.values()]

    page = open_page(browser, url)
    page.get_by_role("tab", name="Duplicates").click()
    assert float(page.locator("#px-dup-threshold input").input_value()) == DEFAULT_THRESHOLD  # the default
    page.locator("#px-dup-threshold input").fill(DUPLICATE_THRESHOLD)
    page.locator("#px-find-duplicates").click()
    done = page.wait_for_selector("#px-dup-progress .px-progress[data-state=completed]", timeout=90_000)
    assert "images searched" in done.inner_text()
    assert int(done.get_attribute("data-done")) == int(done.get_attribute("data-total")) >= 5
    page.wait_for_selector("#px-dup-cancel:disabled")  # the run's buttons, of no use once it is finished
    listing = httpx.get(f"{api.url}/duplicates", params={"limit": 200}).json()
    assert listing["run"]["threshold"] == float(DUPLICATE_THRESHOLD)
    order = {g["id"]: n for n, g in enumerate(listing["groups"])}
    assert {m["id"] for m in listing["groups"][order[a_ids[0]]]["members"]} == set(a_ids)  # nothing else
    assert {m["id"] for m in listing["groups"][order[b_ids[0]]]["members"]} == set(b_ids)

    group_a = show_group(page, a_ids[0], order[a_ids[0]] // 10 * 10)
    copies = group_a.query_selector_all("figure.px-dup-copy")
    assert [c.get_attribute("data-id") for c in copies][0] == a_ids[0]  # the keeper first, marked
    assert {c.get_attribute("data-id") for c in copies} == set(a_ids)
    assert [c.get_attribute("data-keeper") for c in copies] == ["true", "false", "false"]
    keeper = copies[0].inner_text()
    assert "★ keep" in keeper and "320 × 240" in keeper and "KB" in keeper and f"dup-{seed}-a.jpg" in keeper
    small = next(c for c in copies if c.get_attribute("data-id") == a_ids[2]).inner_text()
    assert "160 × 120" in small and "similarity 0.99" in small and "date unknown" in small
    page.wait_for_function(  # the thumbnails load (the mounted page's through Gradio's file route)
        f"[...document.querySelectorAll('#px-dup-{a_ids[0]} img')].every(i => i.complete && i.naturalWidth > 0)")
    assert "oldest capture date" in page.locator("#px-dup-rule").inner_text()  # the keep rule, stated once
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"ui-duplicates-{where}.png"), full_page=True)

    group_a.query_selector(".px-dup-delete").click()  # "Delete the rest"
    page.wait_for_selector(f"#px-dup-{a_ids[0]}", state="detached")
    assert "2 copies deleted" in page.locator("#px-dup-message").inner_text()
    assert [thumbnail_status(api.url, i) for i in a_ids] == [200, 404, 404]

    group_b = show_group(page, b_ids[0], [g["id"] for g in httpx.get(
        f"{api.url}/duplicates", params={"limit": 200}).json()["groups"]].index(b_ids[0]) // 10 * 10)
    dates = [c.query_selector(".px-dup-date").inner_text() for c in group_b.query_selector_all("figure")]
    assert dates == ["2024-06-30 12:00", "2024-07-02 09:30"]  # the keeper: the same pixels, the larger file
    group_b.query_selector(".px-dup-keep").click()  # "Keep all"
    page.wait_for_selector(f"#px-dup-{b_ids[0]}", state="detached")
    assert "All 2 images kept" in page.locator("#px-dup-message").inner_text()
    assert [thumbnail_status(api.url, i) for i in b_ids] == [200, 200]
    left = httpx.get(f"{api.url}/duplicates", params={"limit": 200}).json()["groups"]
    assert not {m["id"] for g in left for m in g["members"]} & {*a_ids, *b_ids}
    page.close()
