"""Throw-away real services for tests and benchmarks: redis-server, Milvus Lite, Celery workers, a tiny model.

Each starts on a free loopback port with its data in a directory you give, and is stopped with `stop()`.
(`make up` runs the long-lived stack itself: see scripts/up.py.)"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A 2-layer ViT at 64 px: real open_clip code, about 3 M parameters, thousands of images/s on CPU.
TINY_MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], object], timeout: float = 30.0, what: str = "service") -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last error: {last})")


def start_redis(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: `make test` installs it, or apt-get install redis-server")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
    )
    wait_for(lambda: redis.Redis(port=port).ping(), what="redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def write_tiny_model(directory: Path) -> tuple[Path, Path]:
    """A custom open_clip config and a checkpoint of seeded weights, loaded like real weights are."""
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "proxima-tiny.json"
    config.write_text(json.dumps(TINY_MODEL_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(7)
    model = open_clip.create_model("proxima-tiny", pretrained=None)
    checkpoint = directory / "proxima-tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Process:
    """A project process with the given environment; its output goes to a log file."""

    what = "process"

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        full_env = {**os.environ, **env, "C_FORCE_ROOT": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        wait_for(self._check_ready, timeout=90, what=self.what)

    def _check_ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.what} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return self.ready()

    def ready(self) -> bool:
        raise NotImplementedError

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        stop(self.proc, timeout=30)
        self._log.close()


class Worker(_Process):
    """A real `celery worker` process."""

    what = "celery worker"

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(["-m", "celery", "-A", "workers.celery_app", "worker", "--loglevel", "INFO",
                          "--without-gossip", "--without-mingle", "-n", f"test-{os.getpid()}-{free_port()}@%h"],
                         env, log_path)

    def ready(self) -> bool:
        return b" ready." in self.log_path.read_bytes()


class Api(_Process):
    """A real API process (`uvicorn api.main:app`) on a free loopback port; `url` is its base URL."""

    what = "API"

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port),
                          "--log-level", "warning"], env, log_path)

    def ready(self) -> bool:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=5).status_code == 200


def start_milvus_lite(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real Milvus Lite server process (several clients, like `make up` runs it)."""
    port = port or free_port()
    exe = Path(sys.executable).with_name("milvus-lite")
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus-lite exited with {proc.returncode}")
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_for(listening, timeout=60, what="milvus-lite server")
    return proc, f"http://127.0.0.1:{port}"
