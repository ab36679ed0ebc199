"""`make up`'s launcher (scripts/up.py) as a user runs it: a supervisor that restarts what dies, stops
everything on Ctrl-C within 10 s, takes its children with it when it is killed, and refuses a model that
cannot load before starting anything."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from scripts.devservices import REPO, child_env, data_dir_sharing_models, free_port, wait_for, write_tiny_model
from scripts.synthetic import jpeg

pytestmark = pytest.mark.slow


class Launcher:
    def __init__(self, tmp: Path, tiny_model: tuple[Path, Path], models: Path | None = None, **overrides: str) -> None:
        config, checkpoint = tiny_model
        models = models or tmp.parent / "models-cache"  # the session's (tests/conftest.py: models_cache)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = {
            "DATA_DIR": str(data_dir_sharing_models(tmp / "data", models)), "API_PORT": str(self.port),
            "FLOWER_PORT": str(free_port()),
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "MODEL_NAME": str(config),
            "MODEL_PRETRAINED": str(checkpoint), "DEVICE": "cpu", "BATCH_SIZE": "4", "DECODE_THREADS": "2",
            "TASK_VISIBILITY_TIMEOUT_S": "10", **overrides,
        }
        self.log_path = tmp / "up.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "scripts/up.py"], cwd=REPO, env=child_env(self.settings),
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.log()[-3000:]
            return "ready: API" in self.log() and httpx.get(self.url + "/health", timeout=5).status_code == 200

        wait_for(ready, 180, "make up's stack")

    def processes(self) -> list[psutil.Process]:
        """Everything the launcher runs: its descendants, and the PostgreSQL it started through pg_ctl."""
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        pid_file = Path(self.settings["DATA_DIR"]) / "postgres" / "postmaster.pid"
        try:
            postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
            found += [postmaster, *postmaster.children(recursive=True)]
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
            pass  # not started, or already gone
        return found

    def worker(self) -> psutil.Process:
        return next(p for p in psutil.Process(self.proc.pid).children()
                    if "celery" in " ".join(p.cmdline()) and " worker " in " ".join(p.cmdline()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self._log.close()


@pytest.fixture
def launcher(tmp_path, tiny_model) -> Iterator[Launcher]:
    up = Launcher(tmp_path, tiny_model)
    try:
        up.wait_ready()
        yield up
    finally:
        up.close()


def _gone(processes: list[psutil.Process]) -> bool:
    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _upload(url: str, seeds: range, size=(1024, 768)) -> dict:
    files = [("files", (f"up-{s}.jpg", jpeg(s, size))) for s in seeds]
    response = httpx.post(f"{url}/images", files=files, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()


def _wait_job(launcher: Launcher, job_url: str, done: Callable[[dict], bool], timeout: float, what: str) -> None:
    """Wait for the job; if it does not get there, fail with where the worker's threads are (py-spy when it is
    on PATH, else Celery's own dump on SIGUSR1, in the log) and the end of the launcher's log."""
    try:
        wait_for(lambda: done(httpx.get(job_url).json()), timeout, what)
    except TimeoutError:
        worker, stacks = launcher.worker(), ""
        if shutil.which("py-spy"):
            stacks = subprocess.run(["py-spy", "dump", "--pid", str(worker.pid)], capture_output=True,
                                    text=True, timeout=60).stdout
        else:
            worker.send_signal(signal.SIGUSR1)
            time.sleep(2)
        raise AssertionError(f"{what}: {httpx.get(job_url).json()}\n{stacks}\n{launcher.log()[-12000:]}") from None


def test_a_killed_worker_is_restarted_and_ctrl_c_then_stops_everything_within_ten_seconds(launcher):
    """One stack for both (each start costs a model check and five processes): a worker SIGKILLed mid-job is
    replaced and every image is indexed once; then Ctrl-C in the middle of the next batch stops it all."""
    body = _upload(launcher.url, range(100, 160), size=(1600, 1200))
    job_url = f"{launcher.url}/jobs/{body['job_id']}"
    _wait_job(launcher, job_url, lambda job: job["done"] >= 4, 60, "the first batches")
    victim = launcher.worker()
    victim.kill()  # as the OOM killer would
    assert httpx.get(f"{launcher.url}/health", timeout=10).status_code == 200  # the API keeps answering
    wait_for(lambda: launcher.worker().pid != victim.pid, 30, "a new worker")
    assert "worker exited with code -9; restarting it" in launcher.log()
    _wait_job(launcher, job_url, lambda job: job["state"] in ("completed", "completed_with_errors", "failed"), 180,
              "the job")
    job = httpx.get(job_url).json()
    assert (job["state"], job["done"], job["failed"]) == ("completed", 60, 0)
    assert httpx.get(f"{launcher.url}/health").json()["vectors"] == 60  # ids are primary keys: each once
    assert launcher.proc.poll() is None

    body = _upload(launcher.url, range(200, 260), size=(1600, 1200))
    wait_for(lambda: httpx.get(f"{launcher.url}/jobs/{body['job_id']}").json()["state"] == "running", 60, "work")
    processes = launcher.processes()
    assert len(processes) >= 5  # redis, postgres, api, worker, flower (and the guardian)
    started = time.monotonic()
    launcher.proc.send_signal(signal.SIGINT)
    launcher.proc.wait(15)
    took = time.monotonic() - started
    print(f"Ctrl-C to the last process gone: {took:.1f} s")
    wait_for(lambda: _gone(processes), 2, "every process to end")
    assert took < 10, launcher.log()[-2000:]
    assert launcher.proc.returncode == 0 and "stopped in" in launcher.log()


def test_a_killed_launcher_takes_its_children_with_it(launcher):
    processes = launcher.processes()
    launcher.proc.kill()
    launcher.proc.wait()
    started = time.monotonic()
    wait_for(lambda: _gone(processes), 10, "the children of a SIGKILLed launcher to end")
    print(f"launcher SIGKILLed: every child gone after {time.monotonic() - started:.1f} s")


def test_a_model_that_cannot_load_stops_at_once_with_one_message(tmp_path, tiny_model):
    up = Launcher(tmp_path, tiny_model, MODEL_PRETRAINED=str(tmp_path / "missing.pt"))
    try:
        up.proc.wait(60)
        out = up.log()
        assert up.proc.returncode != 0
        assert "checkpoint file not found" in out and "Traceback" not in out, out
        assert len(out.strip().splitlines()) <= 5, out
        assert not os.path.exists(tmp_path / "data" / "redis"), "nothing starts before the model is checked"
    finally:
        up.close()


def test_manticore_runs_inside_the_stack_and_keeps_its_data(tmp_path, tiny_model, manticore_searchd):
    """VECTOR_BACKEND=manticore without MANTICORE_URL: the launcher runs searchd (here from MANTICORE_SEARCHD)
    with its data under $DATA_DIR/manticore, stops it with the stack, and a second start finds the index; a
    third start with other model weights stops before the API, saying how to re-embed."""
    settings = {"VECTOR_BACKEND": "manticore", "MANTICORE_SEARCHD": str(manticore_searchd)}
    up = Launcher(tmp_path, tiny_model, MANTICORE_PORT=str(free_port()), **settings)
    try:
        up.wait_ready()
        searchd = [p for p in up.processes() if p.name() == "searchd"]
        assert len(searchd) == 1, up.log()[-2000:]
        body = _upload(up.url, range(300, 306), size=(320, 240))
        job_url = f"{up.url}/jobs/{body['job_id']}"
        wait_for(lambda: httpx.get(job_url).json()["state"] == "completed", 90, "the job")
        health = httpx.get(f"{up.url}/health").json()
        assert (health["backend"], health["vectors"]) == ("manticore", 6), health
        tables = [p.name for p in (tmp_path / "data" / "manticore" / "data").iterdir()]
        assert any(name.startswith("proxima_images_") for name in tables), tables  # the model's own table
        up.proc.send_signal(signal.SIGINT)
        up.proc.wait(15)
        wait_for(lambda: _gone(searchd), 5, "searchd to stop with the stack")
    finally:
        up.close()

    again = Launcher(tmp_path, tiny_model, MANTICORE_PORT=str(free_port()), **settings)
    try:
        again.wait_ready()
        assert httpx.get(f"{again.url}/health").json()["vectors"] == 6
        hits = httpx.post(f"{again.url}/search", files={"file": ("q.jpg", jpeg(300, (320, 240)))}).json()["results"]
        assert hits[0]["id"] == body["images"][0]["id"] and hits[0]["score"] > 0.999
    finally:
        again.close()

    _, other_weights = write_tiny_model(tmp_path / "other", seed=11)
    other = Launcher(tmp_path, tiny_model, MANTICORE_PORT=str(free_port()), MODEL_PRETRAINED=str(other_weights),
                     **settings)
    try:
        other.proc.wait(120)
        out = other.log()
        assert other.proc.returncode != 0 and "the index serves another model" in out, out[-3000:]
        assert "scripts/reembed.py --name " in out and "proxima-tiny.json" in out, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    finally:
        other.close()


def test_manticore_without_a_server_binary_stops_with_what_to_set(tmp_path, tiny_model):
    if shutil.which("searchd", path="/usr/local/bin:/usr/bin:/bin"):
        pytest.skip("a searchd is installed on PATH here: the launcher would use it")
    cases = {"": "MANTICORE_SEARCHD to a searchd binary", str(tmp_path / "nope"): "no executable file there"}
    for n, (searchd, message) in enumerate(cases.items()):
        (tmp_path / str(n)).mkdir()
        up = Launcher(tmp_path / str(n), tiny_model, tmp_path.parent / "models-cache", VECTOR_BACKEND="manticore",
                      MANTICORE_SEARCHD=searchd, PATH="/usr/local/bin:/usr/bin:/bin")
        try:
            up.proc.wait(90)
            out = up.log()
            assert up.proc.returncode != 0 and message in out and "Traceback" not in out, out
        finally:
            up.close()
