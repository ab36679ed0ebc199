"""Real photographs for tests and benchmarks, taken from Debian packages when first needed.

    python scripts/photosets.py            # downloads once, prints the paths

Nothing large is committed: `real_photos()` fetches the `mate-backgrounds` package (46 MB; its
`nature/` folder holds 13 photographs of plants, animals, water, sand and sky, 1920×1200 up to
3840×2400 JPEGs) with `apt-get download` into a cache folder (`PROXIMA_PHOTO_CACHE`, default
`~/.cache/proxima/photosets`) and unpacks it there with `dpkg-deb`. Later calls reuse the cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "mate-backgrounds"
PHOTO_FOLDER = "usr/share/backgrounds/mate/nature"


def cache_dir() -> Path:
    return Path(os.environ.get("PROXIMA_PHOTO_CACHE") or Path.home() / ".cache" / "proxima" / "photosets")


def real_photos(cache: Path | None = None) -> list[Path]:
    """The photographs of `mate-backgrounds` (sorted paths); RuntimeError saying why when they cannot be had."""
    root = (cache or cache_dir()) / PACKAGE
    folder = root / PHOTO_FOLDER
    if not folder.is_dir():
        _fetch(PACKAGE, root)
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not photos:
        raise RuntimeError(f"{folder} holds no photographs: delete {root} and try again")
    return photos


def _fetch(package: str, root: Path) -> None:
    """`apt-get download` the package and unpack it into `root` (atomically: a folder renamed into place)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(f"real photos come from the Debian package {package}: apt-get and dpkg-deb are needed")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        download = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        if download.returncode != 0 and os.geteuid() == 0:  # package lists not fetched yet on this machine
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            download = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {package} failed: {download.stderr.strip()[-500:]}")
        unpacked = Path(tmp) / "unpacked"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        unpacked.rename(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help=f"cache folder (default {cache_dir()})")
    args = parser.parse_args(argv)
    for path in real_photos(args.cache):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
