"""Find the indexed images most similar to one: `python scripts/find_similar.py IMAGE [--top-k K] [filters]`.

Prints a table (rank, score, id, capture date, file name, collections), or JSON with `--json`. `--open` also
writes a small HTML contact sheet of the results and opens it in the browser. The filters are the API's
(README, "Filters"), e.g. `--collection "Trip 2024" --captured-from 2024-06-01 --format JPEG --min-score 0.3`;
`--offset 10` asks for the next page.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
import tempfile
import webbrowser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.cli_api import Api  # noqa: E402

DEFAULT_API = os.environ.get("PROXIMA_API", "http://127.0.0.1:8000")
DEFAULT_KEY = os.environ.get("PROXIMA_API_KEY", "")


FILTERS = [  # (flag, API field, help); repeatable flags are lists in the API
    ("--captured-from", "captured_from", "taken on or after (2024-06-01 or an ISO time)"),
    ("--captured-to", "captured_to", "taken on or before"),
    ("--ingested-from", "ingested_from", "indexed on or after"),
    ("--ingested-to", "ingested_to", "indexed on or before"),
    ("--format", "format", "JPEG, PNG, ... (repeat for any of several)"),
    ("--min-width", "min_width", "at least this many pixels wide"),
    ("--min-height", "min_height", "at least this many pixels high"),
    ("--camera", "camera", "camera make or model, exactly (repeatable)"),
    ("--bbox", "bbox", "south,west,north,east in degrees"),
    ("--collection", "collection", "in this collection (repeat for any of several)"),
    ("--tag", "tag", "has this tag (repeat: has all of them)"),
    ("--any-tag", "any_tag", "has this tag (repeat: has any of them)"),
    ("--path-prefix", "path_prefix", "folder ingests: path under the ingest root starts with this"),
    ("--min-score", "min_score", "leave out results less similar than this cosine"),
    ("--offset", "offset", "skip this many results (the next page)"),
]
REPEATABLE = {"format", "camera", "collection", "tag", "any_tag"}


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters")
    for flag, field, text in FILTERS:
        group.add_argument(flag, dest=field, help=text, action="append" if field in REPEATABLE else "store")
    gps = group.add_mutually_exclusive_group()
    gps.add_argument("--has-gps", dest="has_gps", action="store_const", const="true", help="only with a GPS position")
    gps.add_argument("--no-gps", dest="has_gps", action="store_const", const="false", help="only without one")


def filter_fields(args: argparse.Namespace) -> dict[str, str | list[str]]:
    """The form fields of the filters given on the command line (the API checks them)."""
    fields = {field: getattr(args, field) for _, field, _ in FILTERS}
    fields["has_gps"] = args.has_gps
    return {k: v for k, v in fields.items() if v not in (None, [])}


def search(api: str, image: Path, top_k: int, api_key: str = "", filters: dict | None = None) -> dict:
    """POST the image to /search; exits with a readable message on any failure."""
    try:
        data = image.read_bytes()
    except OSError as exc:
        sys.exit(f"cannot read {image}: {exc.strerror or exc}")
    return Api(api, api_key).call("POST", "/search", files={"file": (image.name, data)},
                                  data={"top_k": str(top_k), **(filters or {})})


def table(results: list[dict], offset: int = 0) -> str:
    if not results:
        return "no matching images" if offset == 0 else "no more results"
    lines = [f"{'rank':>4}  {'score':>6}  {'id':<16}  {'taken':<10}  file name  [collections]"]
    for rank, r in enumerate(results, start=offset + 1):
        taken = (r.get("captured_at") or "")[:10] or "-"
        albums = f"  [{', '.join(r['collections'])}]" if r.get("collections") else ""
        lines.append(f"{rank:>4}  {r['score']:>6.3f}  {r['id'][:16]}  {taken:<10}  {r['filename']}{albums}")
    return "\n".join(lines)


def contact_sheet(api: str, query: Path, results: list[dict], api_key: str = "") -> Path:
    """An HTML page of the results, thumbnails inlined (it then works offline and behind an API key)."""
    base, client = api.rstrip("/"), Api(api, api_key)
    tiles = "\n".join(
        f'<figure><a href="{html.escape(base + r["image_url"])}"><img src="{client.thumbnail(r["thumbnail_url"])}" '
        f'alt="{html.escape(r["filename"])}"></a><figcaption>#{rank} · {r["score"]:.3f}<br>'
        f"{html.escape(r['filename'])}</figcaption></figure>"
        for rank, r in enumerate(results, start=1)
    )
    page = f"""<!doctype html><meta charset="utf-8"><title>Similar to {html.escape(query.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5rem}}main{{display:flex;flex-wrap:wrap;gap:1rem}}
figure{{margin:0;width:200px}}img{{width:200px;height:200px;object-fit:cover;border-radius:4px}}
figcaption{{font-size:.8rem;word-break:break-all}}</style>
<h1>Similar to {html.escape(query.name)}</h1><main>{tiles}</main>"""
    out = Path(tempfile.mkdtemp(prefix="proxima-")) / "results.html"
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--top-k", "-k", type=int, default=10, help="how many results (1-1000)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser.add_argument("--api", default=DEFAULT_API, help=f"API base URL (default {DEFAULT_API}, or $PROXIMA_API)")
    parser.add_argument("--api-key", default=DEFAULT_KEY, help="sent as X-API-Key (default $PROXIMA_API_KEY)")
    parser.add_argument("--open", action="store_true", help="write an HTML contact sheet and open it")
    add_filter_arguments(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.top_k <= 1000:
        parser.error("--top-k must be between 1 and 1000")

    answer = search(args.api, args.image, args.top_k, args.api_key, filter_fields(args))
    print(json.dumps(answer) if args.json else table(answer["results"], answer.get("offset", 0)))
    if not args.json and answer.get("next_offset") is not None:
        print(f"more: --offset {answer['next_offset']}", file=sys.stderr)
    if args.open:
        sheet = contact_sheet(args.api, args.image, answer["results"], args.api_key)
        print(f"contact sheet: {sheet}", file=sys.stderr)
        webbrowser.open(sheet.as_uri())
    return 0


if __name__ == "__main__":
    sys.exit(main())
