"""scripts/find_similar.py against a real API process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.devservices import REPO, Api, child_env, free_port, wait_for
from scripts.synthetic import jpeg


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/find_similar.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=child_env(BROWSER="true"))


@pytest.fixture(scope="module")
def api_url(stack_env, worker, client, tmp_path_factory):
    server = Api(stack_env, tmp_path_factory.mktemp("logs") / "find-similar-api.log")
    yield server.url
    server.stop()


def test_table_json_and_contact_sheet(api_url, client, tmp_path):
    data = jpeg(777)
    files = [("files", ("sunset.jpg", data)), ("files", ("a.jpg", jpeg(778))), ("files", ("b.jpg", jpeg(779)))]
    job = client.post("/images", files=files).json()
    wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json()["state"] == "completed", what="job")
    query = tmp_path / "query.jpg"
    query.write_bytes(data)

    text = run(str(query), "--api", api_url, "--top-k", "3")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "taken", "file", "name", "[collections]"]
    assert lines[1].split()[:2] == ["1", "1.000"] and lines[1].endswith("sunset.jpg")
    assert len(lines) == 4
    assert "more: --offset 3" in text.stderr

    second = run(str(query), "--api", api_url, "--top-k", "1", "--offset", "1", "--min-score", "-1")
    assert second.stdout.strip().splitlines()[1].split()[0] == "2"  # ranks go on from the offset
    nothing = run(str(query), "--api", api_url, "--collection", "no such album", "--format", "PNG")
    assert nothing.returncode == 0 and nothing.stdout.strip() == "no matching images"
    refused = run(str(query), "--api", api_url, "--captured-from", "last week")
    assert refused.returncode != 0 and "captured_from" in refused.stderr

    answer = json.loads(run(str(query), "--api", api_url, "--json", "-k", "2").stdout)
    assert answer["results"][0]["filename"] == "sunset.jpg" and len(answer["results"]) == 2

    opened = run(str(query), "--api", api_url, "--open")
    sheet = opened.stderr.split("contact sheet: ")[1].strip()
    page = Path(sheet).read_text(encoding="utf-8")
    assert "sunset.jpg" in page and f"{api_url}/images/" in page


def test_clear_messages_for_bad_input_and_down_api(api_url, tmp_path):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    refused = run(str(not_image), "--api", api_url)
    assert refused.returncode != 0 and "was refused" in refused.stderr and "plain text" in refused.stderr
    down = run(str(not_image), "--api", f"http://127.0.0.1:{free_port()}")
    assert down.returncode != 0 and "not reachable" in down.stderr
    missing = run(str(tmp_path / "nope.jpg"), "--api", api_url)
    assert missing.returncode != 0 and "cannot read" in missing.stderr
