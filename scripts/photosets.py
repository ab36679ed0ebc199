"""Real photographs for tests and benchmarks, taken from Debian packages when first needed.

    python scripts/photosets.py            # downloads once, prints the paths
    python scripts/photosets.py --stamps   # the labelled stamps: category and path

Nothing large is committed. Each set is a Debian package fetched with `apt-get download` into a cache
folder (`PROXIMA_PHOTO_CACHE`, default `~/.cache/proxima/photosets`) and unpacked there with `dpkg-deb`;
later calls reuse the cache.

- `real_photos()`: `mate-backgrounds` (46 MB); its `nature/` folder holds 12 photographs of plants,
  animals, water, sand and sky, 1920×1200 up to 3840×2400 JPEGs.
- `labelled_stamps()`: `tuxpaint-stamps-default` (161 MB): Tux Paint's stamps, cut-out photographs on a
  transparent background, filed in folders by subject (animals/birds, food/fruit, plants/flowers, ...). The
  folder is the label. Kept: PNGs outside `symbols/` (letters, signs) and outside `cartoon` folders
  (drawings), without the `_mirror` copies, in folders of at least 5 stamps: 325 photos in 26 categories.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

PACKAGE = "mate-backgrounds"
PHOTO_FOLDER = "usr/share/backgrounds/mate/nature"
STAMPS_PACKAGE = "tuxpaint-stamps-default"
STAMPS_FOLDER = "usr/share/tuxpaint/stamps"
MIN_PER_CATEGORY = 5


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


def labelled_stamps(cache: Path | None = None) -> list[tuple[Path, str]]:
    """(path, category) of Tux Paint's photo stamps (see the module's docstring for which), sorted by path."""
    root = (cache or cache_dir()) / STAMPS_PACKAGE
    folder = root / STAMPS_FOLDER
    if not folder.is_dir():
        _fetch(STAMPS_PACKAGE, root)
    stamps = [(path, path.parent.relative_to(folder).as_posix()) for path in sorted(folder.rglob("*.png"))
              if path.relative_to(folder).parts[0] != "symbols" and "cartoon" not in path.parts
              and not path.stem.endswith("_mirror")]
    counts = Counter(category for _, category in stamps)
    kept = [(path, category) for path, category in stamps if counts[category] >= MIN_PER_CATEGORY]
    if not kept:
        raise RuntimeError(f"{folder} holds no stamps: delete {root} and try again")
    return kept


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
    parser.add_argument("--stamps", action="store_true", help="the labelled stamps instead of the photos")
    args = parser.parse_args(argv)
    if args.stamps:
        for path, category in labelled_stamps(args.cache):
            print(f"{category}\t{path}")
        return 0
    for path in real_photos(args.cache):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
