"""Find near-duplicates across the whole collection (the same photo resized, recompressed, re-exported):

    python scripts/find_duplicates.py [--threshold 0.9] [--k 10] [--json F] [--csv F] [--html F]
    python scripts/find_duplicates.py --last --csv dupes.csv     # export the last run's groups, start none

Starts a run on the workers (`POST /admin/duplicates`: every image's nearest neighbours from the index,
pairs at or above the cosine `--threshold` joined into groups), follows it (images searched, rate, ETA),
then reads its groups (`GET /duplicates`) and prints a summary: groups, images in them, and how many images
and bytes keeping only each group's suggested keeper would free (the API's keep rule: the most pixels, then
the largest file, then the oldest capture time). A run cut short (a worker died) is resumed by running this
again. Nothing is deleted here: resolve groups in the web page or with `POST /duplicates/{group}/resolve`.

`--json` writes the groups with every member's record and score to its keeper, `--csv` one row per member
(group, rank, keeper, id, score, filename, width, height, size, captured_at), `--html` a contact sheet: one
row per group, thumbnails side by side (embedded: it works offline and behind an API key), the keeper marked.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.cli_api import Api  # noqa: E402

DEFAULT_API = os.environ.get("PROXIMA_API", "http://127.0.0.1:8000")
DEFAULT_KEY = os.environ.get("PROXIMA_API_KEY", "")
FINAL = {"completed", "completed_with_errors", "failed"}
PAGE = 200  # groups per GET /duplicates (its largest page)
CSV_COLUMNS = ["group", "rank", "keeper", "id", "score", "filename", "width", "height", "size", "captured_at"]


def start(api: Api, threshold: float | None, k: int | None) -> str:
    body = {name: value for name, value in (("threshold", threshold), ("k", k)) if value is not None}
    return str(api.call("POST", "/admin/duplicates", json=body)["job_id"])


def follow(api: Api, job_id: str, *, poll_s: float = 0.5, quiet: bool = False) -> dict:
    """Wait for the run's job to finish, with a progress bar of the images searched (the API's rate and ETA)."""
    job = api.call("GET", f"/jobs/{job_id}")
    with tqdm(total=job["total"], unit="img", desc="searched", disable=quiet or not sys.stderr.isatty(),
              file=sys.stderr) as bar:
        while True:
            bar.total = max(job["total"], job["done"])
            bar.n = job["done"]
            rate, eta = job.get("rate_per_s"), job.get("eta_s")
            bar.set_postfix_str(f"{rate or 0:.0f} img/s, ETA {_duration(eta)}" if rate else "waiting for a worker")
            if job["state"] in FINAL:
                return job
            if job.get("interrupted"):
                sys.exit(f"duplicates run {job_id} stopped after {job['done']} of {job['total']} images (its "
                         "worker went away): run this again to resume it")
            time.sleep(poll_s)
            job = api.call("GET", f"/jobs/{job_id}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def pages(api: Api) -> Iterator[dict]:
    offset: int | None = 0
    while offset is not None:
        page = api.call("GET", "/duplicates", params={"offset": offset, "limit": PAGE})
        yield page
        offset = page["next_offset"]


def read_groups(api: Api) -> tuple[list[dict], dict]:
    """Every group of the last run (largest first) and the first page's run info and keep rule."""
    groups: list[dict] = []
    first: dict | None = None
    for page in pages(api):
        first = first or page
        groups += [g for g in page["groups"] if len(g["members"]) > 1]  # members may have gone since
    assert first is not None
    return groups, {"run": first["run"], "keep_rule": first["keep_rule"]}


def summarise(groups: list[dict]) -> dict[str, int]:
    extra = [m for g in groups for m in g["members"] if not m["keeper"]]
    return {"groups": len(groups), "images_in_groups": sum(len(g["members"]) for g in groups),
            "would_delete": len(extra), "bytes_freed": sum(m["size_bytes"] for m in extra)}


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} bytes"


def report(groups: list[dict], meta: dict, totals: dict[str, int], show: int) -> str:
    run = meta["run"] or {}
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["finished_at"])) if run.get("finished_at") else "?"
    lines = [f"duplicates run {run.get('job_id', '?')} (threshold {run.get('threshold', '?')}, "
             f"k {run.get('k', '?')}, {run.get('searched', '?')} images searched, finished {when})",
             f"groups:             {totals['groups']}",
             f"images in groups:   {totals['images_in_groups']}",
             f"would be deleted:   {totals['would_delete']} (keeping one image per group)",
             f"space freed:        {_size(totals['bytes_freed'])}",
             f"keeper:             {meta['keep_rule']}"]
    if groups and show:
        lines += ["", f"{'size':>4}  {'keeper id':<16}  {'pixels':>11}  {'lowest':>6}  keeper file name"]
        for g in groups[:show]:
            keeper = g["members"][0]
            lowest = min(m["score"] for m in g["members"])
            lines.append(f"{len(g['members']):>4}  {keeper['id'][:16]}  "
                         f"{keeper['width']:>5}×{keeper['height']:<5}  {lowest:>6.3f}  {keeper['filename']}")
        if len(groups) > show:
            lines.append(f"... and {len(groups) - show} more groups (--show N, or --csv / --json / --html)")
    return "\n".join(lines)


def csv_rows(groups: list[dict]) -> Iterator[dict]:
    for g in groups:
        for rank, m in enumerate(g["members"], start=1):
            yield {"group": g["id"], "rank": rank, "keeper": int(m["keeper"]), "id": m["id"],
                   "score": f"{m['score']:.6f}", "filename": m["filename"], "width": m["width"],
                   "height": m["height"], "size": m["size_bytes"], "captured_at": m["captured_at"] or ""}


def write_csv(path: Path, groups: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(groups))


def write_json(path: Path, groups: list[dict], meta: dict, totals: dict[str, int]) -> None:
    path.write_text(json.dumps({**meta, "summary": totals, "groups": groups}, indent=1), encoding="utf-8")


def contact_sheet(api: Api, groups: list[dict], meta: dict, totals: dict[str, int], limit: int) -> str:
    rows = []
    for g in groups[:limit]:
        tiles = []
        for m in g["members"]:
            label = "keep" if m["keeper"] else f"{m['score']:.4f}"
            caption = (f"{label} · {m['width']}×{m['height']} · "
                       f"{_size(m['size_bytes'])}<br>{html.escape(m['filename'])}"
                       + (f"<br>{html.escape(m['captured_at'][:19])}" if m["captured_at"] else ""))
            tiles.append(f'<figure class="{"keeper" if m["keeper"] else ""}"><a href="'
                         f'{html.escape(api.url + m["image_url"])}"><img src="{api.thumbnail(m["thumbnail_url"])}" '
                         f'alt="{html.escape(m["filename"])}" title="{html.escape(m["id"])}"></a>'
                         f"<figcaption>{caption}</figcaption></figure>")
        rows.append(f'<section><h2>{len(g["members"])} images · group {html.escape(g["id"][:16])}</h2>'
                    f'<div class="row">{"".join(tiles)}</div></section>')
    more = (f"<p>… and {len(groups) - limit} more groups (--html-limit, or --csv / --json)</p>"
            if len(groups) > limit else "")
    run = meta["run"] or {}
    return f"""<!doctype html><meta charset="utf-8"><title>Near-duplicates</title>
<style>body{{font-family:sans-serif;margin:1.5rem}}.row{{display:flex;gap:.8rem;overflow-x:auto}}
figure{{margin:0;width:180px;flex:none}}img{{width:180px;height:180px;object-fit:cover;border-radius:4px;
border:3px solid transparent}}.keeper img{{border-color:#2a7}}figcaption{{font-size:.75rem;word-break:break-all}}
.keeper figcaption{{font-weight:bold;color:#2a7}}h2{{font-size:1rem;margin:1.2rem 0 .4rem}}</style>
<h1>Near-duplicates</h1>
<p>{totals['groups']} groups, {totals['images_in_groups']} images; keeping one per group deletes
{totals['would_delete']} images ({_size(totals['bytes_freed'])}). Threshold {run.get('threshold', '?')};
the keeper (green) is {html.escape(meta['keep_rule'])}; the others show their cosine similarity to it.</p>
{"".join(rows)}{more}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", "-t", type=float,
                        help="near-duplicates at this cosine similarity or above (default: the API's, 0.90)")
    parser.add_argument("--k", "-k", type=int, help="neighbours looked at per image, 1-100 (default: the API's)")
    parser.add_argument("--last", action="store_true", help="start no run: export the last finished run's groups")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the groups as JSON")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="write one row per group member")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write a contact sheet, one row per group")
    parser.add_argument("--html-limit", type=int, default=500, metavar="N", help="groups on the sheet (500)")
    parser.add_argument("--show", type=int, default=10, metavar="N", help="largest groups listed here (10)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--api", default=DEFAULT_API, help=f"API base URL (default {DEFAULT_API}, or $PROXIMA_API)")
    parser.add_argument("--api-key", default=DEFAULT_KEY, help="sent as X-API-Key (default $PROXIMA_API_KEY)")
    args = parser.parse_args(argv)
    if args.last and (args.threshold is not None or args.k is not None):
        parser.error("--last exports the last run as it was: no --threshold or --k with it")
    if args.threshold is not None and not 0 < args.threshold <= 1:
        parser.error("--threshold is a cosine similarity in (0, 1]")
    if args.k is not None and not 1 <= args.k <= 100:
        parser.error("--k must be between 1 and 100")

    api = Api(args.api, args.api_key)
    if not args.last:
        job_id = start(api, args.threshold, args.k)
        print(f"duplicates run {job_id} started", file=sys.stderr)
        try:
            job = follow(api, job_id, quiet=args.quiet)
        except KeyboardInterrupt:
            print(f"\nstopped following; the run goes on in the workers (GET /jobs/{job_id}); "
                  "`--last` exports it once it is done", file=sys.stderr)
            return 130
        if job["state"] != "completed":
            sys.exit(f"duplicates run {job_id} ended {job['state']}: {json.dumps(job.get('errors', [])[:3])}")
    groups, meta = read_groups(api)
    if meta["run"] is None:
        sys.exit("no duplicates run has finished yet: run this without --last")
    if not args.last and meta["run"].get("job_id") != job_id:
        print(f"note: the groups shown are of run {meta['run'].get('job_id')}, which finished after this one",
              file=sys.stderr)
    elif not args.last and args.threshold is not None and meta["run"].get("threshold") != args.threshold:
        print(f"note: an unfinished run was resumed instead, with its own threshold {meta['run']['threshold']}",
              file=sys.stderr)
    totals = summarise(groups)
    print(report(groups, meta, totals, args.show))
    for path, write in ((args.json, lambda p: write_json(p, groups, meta, totals)),
                        (args.csv, lambda p: write_csv(p, groups)),
                        (args.html, lambda p: p.write_text(contact_sheet(api, groups, meta, totals, args.html_limit),
                                                           encoding="utf-8"))):
        if path is not None:
            try:
                write(path)
            except OSError as exc:
                sys.exit(f"cannot write {path}: {exc.strerror or exc}")
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
