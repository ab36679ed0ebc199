"""The Gradio page: search (image, webcam, text, more like this), add images, near-duplicates (find them,
then delete the rest of a group or keep all), jobs (recent ones, paged; pause, resume or cancel one) and
status (with the model identities, a re-embed's progress and the switch to another model). Wherever the
page follows a job (an upload or folder ingest, a duplicates run, a re-embed) it offers Pause, Resume and
Cancel for it.

`build_ui(service)` works with any ProximaService: in the API process it gets a LocalService (same
service functions as the routes, no HTTP round trip); `python -m ui --api URL` gives it a RemoteService.
Here are the layout and the event handlers; the HTML and text they show come from `ui.render`.
"""

from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import gradio as gr

from shared.duplicates import DEFAULT_THRESHOLD
from shared.pipeline import MAX_QUERY_CHARS
from shared.types import Job, JobState
from ui import render
from ui.render import Action
from ui.service import DuplicateGroup, Found, ProximaService, Query, ServiceError
from ui.text import i18n, language, t

log = logging.getLogger(__name__)

MAX_TOP_K = 100
POLL_S = 0.5
MODELS_POLL_S = 2.0  # the status tab refreshes itself this often while a re-embed is running
GROUPS_PER_PAGE = 10  # groups of near-duplicates on one page of the duplicates tab
JOBS_PER_PAGE = 20  # jobs on one page of the jobs tab
PAUSED_POLL_S = 1.0  # following a paused job: nothing moves until someone resumes it
CSS = """
#px-title, #px-title * { font-size: 1.5rem !important; font-weight: 600; }
.px-progress progress { width: 100%; height: 1.4em; }
.px-error { color: var(--error-text-color, #b91c1c); }
.px-models { border-collapse: collapse; width: 100%; }
.px-models th, .px-models td { padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
.px-models td.px-num { text-align: right; }
.px-models td.px-reembed { min-width: 18em; }
#px-results .fixed-height { max-height: none; min-height: 0; }  /* every result on the page, not a scroll box */
.px-dup-group { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 0.6em; }
.px-dup-row { display: flex; flex-wrap: wrap; gap: 0.8em; }
.px-dup-copy { margin: 0; width: 190px; padding: 0.4em; border: 3px solid transparent; border-radius: 8px; }
.px-dup-copy img { display: block; width: 100%; height: 150px; object-fit: contain;
                   background: var(--background-fill-secondary); }
.px-dup-copy figcaption { font-size: 0.85em; line-height: 1.4; overflow-wrap: anywhere; margin-top: 0.3em; }
.px-dup-keeper { border-color: var(--color-accent, #f97316); }
.px-dup-keeper .px-dup-mark { color: var(--color-accent, #f97316); }
.px-jobs { border-collapse: collapse; width: 100%; }
.px-jobs th, .px-jobs td { padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
.px-jobs td.px-num { text-align: right; white-space: nowrap; }
.px-jobs tbody tr { cursor: pointer; }
.px-jobs tbody tr:hover, .px-jobs tbody tr:focus { background: var(--background-fill-secondary); }
.px-jobs tbody tr[aria-selected=true] { outline: 2px solid var(--color-accent, #f97316); }
.px-jobs td.px-job-path { overflow-wrap: anywhere; }
"""
# The jobs table: a click on a row (or Enter on it) marks it and sends its job id to the server (`pick_job`).
PICK_ROW = """
const pick = (row) => {
  element.querySelectorAll('tr[aria-selected]').forEach((r) => r.removeAttribute('aria-selected'));
  row.setAttribute('aria-selected', 'true');
  trigger('click', {job: row.dataset.job});
};
element.addEventListener('click', (e) => { const row = e.target.closest('tr[data-job]'); if (row) pick(row); });
element.addEventListener('keydown', (e) => {
  const row = e.target.closest('tr[data-job]');
  if (row && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); pick(row); }
});
"""
ACTIONS: tuple[Action, ...] = ("pause", "resume", "cancel")  # in the order of the buttons

FORMATS = ["JPEG", "PNG", "WEBP", "HEIF", "GIF", "TIFF", "BMP", "AVIF"]
Gallery = list[tuple[str, str]]


@dataclass(frozen=True)
class Tile:
    """One result on the page: what the gallery shows, and the id behind it (for "more like this")."""

    id: str
    filename: str
    image: str
    caption: str


@dataclass(frozen=True)
class Asked:
    """The search on the page, kept so "More results" can fetch its next page."""

    kind: Literal["image", "text", "similar"]
    subject: bytes | str  # the query image's bytes, the text, or the image id
    k: int
    filters: dict[str, Any]
    like: str | None = None  # "more like this": the clicked image's filename
    next_offset: int | None = None


# message, gallery, tiles, the search, the "More results" button (the first two may be gr.update())
Shown = tuple[Any, Any, list[Tile], Asked | None, dict[str, Any]]


@dataclass(frozen=True)
class DuplicatesShown:
    """The page of groups of near-duplicates on the duplicates tab (the groups are drawn from it)."""

    offset: int
    total: int
    groups: tuple[DuplicateGroup, ...]


# the groups shown, a line when there are none (or they cannot be read), the "Previous" and "Next" buttons
GroupsShown = tuple[DuplicatesShown | None, str, dict[str, Any], dict[str, Any]]
# a followed job: its progress, its errors, its id (None: none started) and its Pause, Resume, Cancel buttons
Followed = tuple[str, str, str | None, dict[str, Any], dict[str, Any], dict[str, Any]]
# the jobs tab: the table (with its page line), its offset, the "Newer" and "Older" buttons, its timer
JobsShown = tuple[str, int, dict[str, Any], dict[str, Any], Any]


def _lang(request: gr.Request | None) -> str:
    return language(request.headers.get("accept-language") if request is not None else None)


def _error(lang: str, exc: Exception) -> str:
    if isinstance(exc, ServiceError):
        text = t(lang, exc.kind, detail=exc.detail)
    else:  # a bug: logged with its traceback, shown as one line
        log.exception("UI request failed")
        text = t(lang, "error", detail=f"{type(exc).__name__}: {exc}")
    return f'<p class="px-error" role="alert">❌ {html.escape(text)}</p>'


def _filters(captured_from: str | None, captured_to: str | None, collections: list[str] | str | None,
             formats: list[str] | None, camera: str | None, tags: str | None, min_score: str | None,
             ) -> dict[str, Any]:
    """The filter panel as the API's filter fields, only those filled in (values are checked by the service;
    ServiceError for a minimum score that is not a number)."""
    out: dict[str, Any] = {}
    if (captured_from or "").strip():
        out["captured_from"] = (captured_from or "").strip()
    if (captured_to or "").strip():
        out["captured_to"] = (captured_to or "").strip()
    if collections:
        out["collection"] = [collections] if isinstance(collections, str) else list(collections)
    if formats:
        out["format"] = list(formats)
    if (camera or "").strip():
        out["camera"] = [(camera or "").strip()]
    tag_list = [tag.strip() for tag in (tags or "").split(",") if tag.strip()]
    if tag_list:
        out["tag"] = tag_list
    if (min_score or "").strip():
        try:
            score = float((min_score or "").strip().replace(",", "."))
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise ServiceError("bad_input", f"min_score: {min_score!r} is not a number (-1 to 1)")
        out["min_score"] = score
    return out


def build_ui(service: ProximaService, *, default_top_k: int = 12) -> gr.Blocks:
    """The whole page; its labels are gr.I18n keys (pass `ui.text.i18n` to launch or mount)."""

    def fetch(asked: Asked, offset: int) -> Found:
        query = Query(asked.filters, offset)
        if asked.kind == "image" and isinstance(asked.subject, bytes):
            return service.search_image(asked.subject, asked.k, query)
        if asked.kind == "text" and isinstance(asked.subject, str):
            return service.search_text(asked.subject, asked.k, query)
        return service.similar(str(asked.subject), asked.k, query)

    def show(lang: str, asked: Asked, before: list[Tile] | None = None) -> Shown:
        """The first page of `asked`, or with `before` (the tiles shown) its next page added to them."""
        before = before or []
        try:
            found = fetch(asked, (asked.next_offset or 0) if before else 0)
        except Exception as exc:  # every failure becomes a readable message
            if before:  # the tiles shown stay
                return _error(lang, exc), [(tile.image, tile.caption) for tile in before], before, asked, gr.update()
            return _error(lang, exc), [], [], None, gr.update(visible=False)
        asked = replace(asked, next_offset=found.next_offset)
        tiles = before + [Tile(r.id, r.filename, r.image, render.caption(r)) for r in found.results]
        if not tiles:
            text = render.note(t(lang, "no_match" if asked.filters else "no_results"))
        elif before:
            text = render.note(t(lang, "more_found", n=len(tiles), m=len(found.results), ms=found.took_ms))
        elif asked.like is not None:
            text = render.note(t(lang, "like_this", n=len(tiles), name=asked.like, ms=found.took_ms))
        else:
            text = render.note(t(lang, "found", n=len(tiles), ms=found.took_ms))
        return (text, [(tile.image, tile.caption) for tile in tiles], tiles, asked,
                gr.update(visible=found.next_offset is not None and bool(tiles)))

    def nothing(text: str) -> Shown:
        return text, [], [], None, gr.update(visible=False)

    def ask(lang: str, make: Callable[[], Asked]) -> Shown:
        """A new search, unless its filters are unusable."""
        try:
            asked = make()
        except ServiceError as exc:
            return nothing(_error(lang, exc))
        return show(lang, asked)

    def by_image(path: str | None, k: float, captured_from: str, captured_to: str, collections: list[str],
                 formats: list[str], camera: str, tags: str, min_score: str,
                 request: gr.Request) -> Shown:
        lang = _lang(request)
        if not path:
            return nothing(render.note(t(lang, "no_query_image")))
        return ask(lang, lambda: Asked("image", Path(path).read_bytes(), int(k), _filters(
            captured_from, captured_to, collections, formats, camera, tags, min_score)))

    def by_text(text: str, k: float, captured_from: str, captured_to: str, collections: list[str],
                formats: list[str], camera: str, tags: str, min_score: str, request: gr.Request) -> Shown:
        lang = _lang(request)
        if not (text or "").strip():
            return nothing(render.note(t(lang, "no_query_text")))
        return ask(lang, lambda: Asked("text", text, int(k), _filters(
            captured_from, captured_to, collections, formats, camera, tags, min_score)))

    def like_this(tiles: list[Tile], k: float, captured_from: str, captured_to: str, collections: list[str],
                  formats: list[str], camera: str, tags: str, min_score: str, evt: gr.SelectData,
                  request: gr.Request) -> Shown:
        tile = tiles[evt.index]
        return ask(_lang(request), lambda: Asked("similar", tile.id, int(k), _filters(
            captured_from, captured_to, collections, formats, camera, tags, min_score), like=tile.filename))

    def more(asked: Asked | None, tiles: list[Tile], request: gr.Request) -> Shown:
        if asked is None or asked.next_offset is None or not tiles:
            return gr.update(), gr.update(), tiles, asked, gr.update(visible=False)
        return show(_lang(request), asked, tiles)

    def collections() -> tuple[dict[str, Any], dict[str, Any]]:
        """Both collection pickers, with the collections there are now (unchanged if that cannot be read)."""
        try:
            names = service.collections()
        except Exception:
            log.warning("could not list the collections", exc_info=True)
            return gr.update(), gr.update()
        return gr.update(choices=names), gr.update(choices=names)

    def follow(lang: str, start: Callable[[], str]) -> Iterator[Followed]:
        """Start a job and show its progress until it is finished. A paused job is not: it is followed (more
        slowly) until someone resumes or cancels it, here or elsewhere; the buttons follow its state."""
        try:
            job_id = start()
        except Exception as exc:
            yield _error(lang, exc), "", None, *_controls(None)
            return
        paused = False
        while True:
            try:
                job = service.job(job_id)
            except ServiceError as exc:  # e.g. Redis restarting: keep following, the buttons as they are
                yield _error(lang, exc), "", job_id, gr.update(), gr.update(), gr.update()
            else:
                yield render.progress(lang, job), render.errors(lang, job), job_id, *_controls(job)
                if job.finished:  # done or cancelled, or its walk died before the end and what was queued is done
                    return
                paused = job.state is JobState.PAUSED
            time.sleep(PAUSED_POLL_S if paused else POLL_S)

    def following(lang: str, start: Callable[[], str]) -> Iterator[tuple[Any, ...]]:
        """`follow` for the add-images tab: the line under its buttons (a pause's, a refusal's) goes once."""
        note: Any = ""
        for followed in follow(lang, start):
            yield *followed, note
            note = gr.update()  # from now on it says what the buttons did

    def upload(paths: list[str] | None, collection: str | None, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        lang = _lang(request)
        if not paths:
            yield render.note(t(lang, "no_files")), "", None, *_controls(None), ""
            return
        name = (collection or "").strip() or None
        yield from following(lang, lambda: service.upload([Path(p) for p in paths], name))

    def ingest(path: str, recursive: bool, collection: str | None, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        lang = _lang(request)
        if not (path or "").strip():
            yield render.note(t(lang, "no_folder")), "", None, *_controls(None), ""
            return
        name = (collection or "").strip() or None
        yield from following(lang, lambda: service.ingest_folder(path.strip(), recursive, name))

    def apply(action: Action, job_id: str) -> Job:
        """Pause, resume or cancel a job (writes: behind the API key like `activate`, see there)."""
        if action == "pause":
            return service.pause(job_id)
        return service.resume(job_id) if action == "resume" else service.cancel(job_id)

    def controlling(action: Action) -> Callable[..., tuple[Any, ...]]:
        """The click on a followed job's Pause, Resume or Cancel button: what became of the job (or why it
        was refused, e.g. it is finished meanwhile) and the buttons as its state allows."""

        def control(job_id: str | None, request: gr.Request) -> tuple[Any, ...]:
            lang = _lang(request)
            if not job_id:
                return render.note(t(lang, "no_job_followed")), *_controls(None)
            try:
                job = apply(action, job_id)
            except Exception as exc:
                return _error(lang, exc), gr.update(), gr.update(), gr.update()
            return render.note(render.controlled(lang, action, job)), *_controls(job)

        return control

    def status(chosen: str | None, request: gr.Request) -> tuple[Any, ...]:
        """The status tab (health, the model identities, the activate picker) and what depends on the model."""
        lang = _lang(request)
        keep = gr.update()
        try:
            health = service.status()
        except Exception as exc:  # the text box stays as it is
            return (gr.update(visible=False), _error(lang, exc), keep, keep, keep, keep, keep, keep, keep, keep, keep,
                    keep, keep)
        model = health.get("model") or {}
        text_on = bool((health.get("capabilities") or {}).get("text_search", True))
        why = "" if text_on else t(lang, "text_search_off", model=f"{model.get('name')}/{model.get('pretrained')}",
                                   extractor=model.get("extractor", "?"))
        reembed: tuple[Any, ...] = (keep, keep, keep, keep, keep)  # its job id, its line, its three buttons
        try:  # /health carries the same list (one call instead of two); an API without it is asked directly
            models = list(health["models"]) if "models" in health else service.models()
        except Exception as exc:
            table, picker, running = _error(lang, exc), gr.update(), False
        else:
            slugs = [(f"{m.get('slug')} · {render.state_text(lang, m)}", str(m.get("slug")))
                     for m in models if m.get("state") != "active"]
            kept = chosen if chosen in {slug for _, slug in slugs} else None
            table, picker = render.models(lang, models), gr.update(choices=slugs, value=kept)
            jobs = [(m, job) for m in models
                    if m.get("state") == "building" and (job := render.model_job(m)) is not None]
            running = any(not job.finished for _, job in jobs)  # a paused one too: it may be resumed elsewhere
            # the buttons act on the re-embed going on (the latest one when none is)
            shown = next(((m, job) for m, job in jobs if not job.finished), jobs[-1] if jobs else None)
            if shown is None:
                reembed = (None, gr.update(visible=False), *_controls(None))
            else:
                line = t(lang, "reembed_controls", slug=f"`{shown[0].get('slug')}`")
                reembed = (shown[1].job_id, gr.update(value=line, visible=True), *_controls(shown[1]))
        return (gr.update(value=t(lang, "random_warning"), visible=bool(model.get("random"))),
                render.status(lang, health, _flower_link(service.flower_url, request)),
                gr.update(visible=text_on), gr.update(visible=text_on), gr.update(value=why, visible=not text_on),
                table, picker, gr.Timer(active=running), *reembed)

    def activate(slug: str | None, request: gr.Request) -> str:
        """Switch searches to another model's index. A write: with API_KEY set, the page mounted in the API asks
        for the key before it shows anything (`mount(..., auth=...)`), and the page run on its own sends its
        --api-key, which the API checks (POST /admin/models/{slug}/activate); without it the API refuses."""
        lang = _lang(request)
        if not slug:
            return render.note(t(lang, "no_model_chosen"))
        try:
            service.activate(slug)
        except Exception as exc:  # e.g. the index is not complete yet: the API's reason, translated
            return _error(lang, exc)
        return render.note(t(lang, "model_activated", slug=slug))

    def groups_page(lang: str, offset: int) -> GroupsShown:
        """A page of the groups of near-duplicates from `offset` (the last page when fewer are left now)."""
        try:
            total, groups = service.duplicates(offset, GROUPS_PER_PAGE)
            if not groups and offset > 0 and total > 0:  # resolved down to fewer pages: show the last one
                offset = (total - 1) // GROUPS_PER_PAGE * GROUPS_PER_PAGE
                total, groups = service.duplicates(offset, GROUPS_PER_PAGE)
        except Exception as exc:
            return None, _error(lang, exc), gr.update(interactive=False), gr.update(interactive=False)
        if not groups:
            return None, render.note(t(lang, "dup_none")), gr.update(interactive=False), gr.update(interactive=False)
        return (DuplicatesShown(offset, total, tuple(groups)), "", gr.update(interactive=offset > 0),
                gr.update(interactive=offset + len(groups) < total))

    def show_groups(shown: DuplicatesShown | None, request: gr.Request) -> GroupsShown:
        return groups_page(_lang(request), shown.offset if shown else 0)

    def previous_groups(shown: DuplicatesShown | None, request: gr.Request) -> GroupsShown:
        return groups_page(_lang(request), max(0, (shown.offset if shown else 0) - GROUPS_PER_PAGE))

    def next_groups(shown: DuplicatesShown | None, request: gr.Request) -> GroupsShown:
        return groups_page(_lang(request), (shown.offset if shown else 0) + GROUPS_PER_PAGE)

    def find_duplicates(threshold: float | None, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        """Start a run over the whole collection (a worker's job), follow it like an ingest, then show the
        groups from the first page. A write: behind the API key like `activate` (see there)."""
        lang = _lang(request)
        off, keep = gr.update(interactive=False), gr.update()
        yield "", "", None, "", off, off, None, *_controls(None), ""  # the groups shown go: the run replaces them
        shown = ""
        note: Any = ""
        for shown, _, job_id, *buttons in follow(lang, lambda: service.find_duplicates(threshold)):
            yield shown, "", None, "", off, off, job_id, *buttons, note
            note = keep  # from now on it says what the buttons did
        yield shown, "", *groups_page(lang, 0), keep, keep, keep, keep, keep

    def resolving(group: DuplicateGroup, delete: bool) -> Callable[..., tuple[Any, ...]]:
        """The click on one group's "Delete the rest" (`delete`) or "Keep all" button: every member but the
        keeper deleted, or taken out of the group (which goes, being the keeper alone). A write: behind the
        API key like `activate` (see there): the page mounted in the API asks for the key before it shows
        anything, the page run on its own sends its --api-key (POST /duplicates/{id}/resolve)."""
        keeper = next((m.filename for m in group.members if m.keeper), group.id)

        def act(shown: DuplicatesShown | None, request: gr.Request) -> tuple[Any, ...]:
            lang = _lang(request)
            rest = group.rest
            try:
                deleted, _ = service.resolve_duplicates(group.id, delete=rest if delete else [],
                                                        ungroup=[] if delete else rest)
            except Exception as exc:  # e.g. the group went meanwhile (another tab, a new run): say so, reload
                note = _error(lang, exc)
            else:
                note = render.note(t(lang, "dup_deleted", n=deleted, name=keeper) if delete
                             else t(lang, "dup_kept", n=len(group.members), name=keeper))
            return note, *groups_page(lang, shown.offset if shown else 0)

        return act

    def jobs_page(lang: str, offset: int, picked: str | None) -> JobsShown:
        """A page of the recent jobs from `offset` (the last page when fewer are left now), `picked` marked.
        The tab refreshes itself while one of them is not finished."""
        try:
            total, jobs = service.jobs(offset, JOBS_PER_PAGE)
            if not jobs and offset > 0 and total > 0:
                offset = (total - 1) // JOBS_PER_PAGE * JOBS_PER_PAGE
                total, jobs = service.jobs(offset, JOBS_PER_PAGE)
        except Exception as exc:  # e.g. Redis restarting: the timer, if on, tries again
            return _error(lang, exc), offset, gr.update(), gr.update(), gr.update()
        return (render.jobs_table(lang, offset, total, jobs, (picked or "").strip()), offset,
                gr.update(interactive=offset > 0), gr.update(interactive=offset + len(jobs) < total),
                gr.Timer(active=any(not job.finished for job in jobs)))

    def show_jobs(offset: int | None, picked: str | None, request: gr.Request) -> JobsShown:
        return jobs_page(_lang(request), offset or 0, picked)

    def newer_jobs(offset: int | None, picked: str | None, request: gr.Request) -> JobsShown:
        return jobs_page(_lang(request), max(0, (offset or 0) - JOBS_PER_PAGE), picked)

    def older_jobs(offset: int | None, picked: str | None, request: gr.Request) -> JobsShown:
        return jobs_page(_lang(request), (offset or 0) + JOBS_PER_PAGE, picked)

    def pick_job(evt: gr.EventData) -> Any:
        """A click on a row of the jobs table (`PICK_ROW`): its job goes into the job field."""
        try:
            job_id = evt.job
        except (AttributeError, TypeError):  # a click elsewhere
            return gr.update()
        return job_id if isinstance(job_id, str) and job_id else gr.update()

    def acting(action: Action) -> Callable[..., tuple[Any, ...]]:
        """The jobs tab's Pause, Resume or Cancel button, on the job in the job field; then the page again."""

        def control(picked: str | None, offset: int | None, request: gr.Request) -> tuple[Any, ...]:
            lang = _lang(request)
            job_id = (picked or "").strip()
            if not job_id:
                note = render.note(t(lang, "no_job_picked"))
            else:
                try:
                    note = render.note(render.controlled(lang, action, apply(action, job_id)))
                except Exception as exc:  # e.g. it is finished: "job … is completed: it cannot be paused any more"
                    note = _error(lang, exc)
            return note, *jobs_page(lang, offset or 0, job_id)

        return control

    with gr.Blocks(title="Proxima", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(i18n("title"), elem_id="px-title")
        banner = gr.Markdown(visible=False, elem_id="px-random-warning")
        tiles = gr.State([])
        asked = gr.State(None)
        with gr.Tab(i18n("tab_search"), id="search") as search_tab, gr.Row():
            with gr.Column(scale=1, min_width=280):
                query_image = gr.Image(label=i18n("query_image"), type="filepath", image_mode=None,
                                       sources=["upload", "webcam", "clipboard"], elem_id="px-query-image")
                image_btn = gr.Button(i18n("search_image_btn"), variant="primary", elem_id="px-search-image")
                query_text = gr.Textbox(label=i18n("query_text"), placeholder=i18n("query_text_placeholder"),
                                        max_length=MAX_QUERY_CHARS, elem_id="px-query-text")
                text_btn = gr.Button(i18n("search_text_btn"), elem_id="px-search-text")
                text_off = gr.Markdown(visible=False, elem_id="px-text-off")  # why there is no text box
                top_k = gr.Slider(1, MAX_TOP_K, value=default_top_k, step=1, label=i18n("top_k"),
                                  elem_id="px-top-k")
                with gr.Accordion(i18n("filters"), open=False, elem_id="px-filters"):
                    with gr.Row():
                        captured_from = gr.Textbox(label=i18n("captured_from"), placeholder="2024-06-01",
                                                   max_lines=1, elem_id="px-captured-from")
                        captured_to = gr.Textbox(label=i18n("captured_to"), placeholder="2024-06-30",
                                                 max_lines=1, elem_id="px-captured-to")
                    filter_collections = gr.Dropdown([], value=[], multiselect=True, label=i18n("collections"),
                                                     info=i18n("collections_info"), elem_id="px-filter-collections")
                    formats = gr.Dropdown(FORMATS, value=[], multiselect=True, label=i18n("formats"),
                                          elem_id="px-filter-formats")
                    camera = gr.Textbox(label=i18n("camera"), placeholder=i18n("camera_placeholder"), max_lines=1,
                                        elem_id="px-filter-camera")
                    tags = gr.Textbox(label=i18n("tags"), placeholder=i18n("tags_placeholder"), max_lines=1,
                                      elem_id="px-filter-tags")
                    min_score = gr.Textbox(label=i18n("min_score"), placeholder="0.25", max_lines=1,
                                           elem_id="px-min-score")
            with gr.Column(scale=3):
                message = gr.HTML(elem_id="px-search-message")
                gallery = gr.Gallery(label=i18n("results"), columns=4, height="auto", object_fit="cover",
                                     allow_preview=False, interactive=False, elem_id="px-results")
                more_btn = gr.Button(i18n("more_results"), visible=False, elem_id="px-more")
        with gr.Tab(i18n("tab_ingest"), id="ingest"):
            upload_collection = gr.Dropdown([], value=None, allow_custom_value=True, label=i18n("upload_collection"),
                                            info=i18n("upload_collection_info"), elem_id="px-upload-collection")
            with gr.Row():
                with gr.Column():
                    files = gr.File(label=i18n("upload_files"), file_count="multiple", type="filepath",
                                    elem_id="px-upload-files")
                    upload_btn = gr.Button(i18n("upload_btn"), variant="primary", elem_id="px-upload")
                with gr.Column():
                    folder = gr.Textbox(label=i18n("folder_path"), elem_id="px-folder")
                    recursive = gr.Checkbox(True, label=i18n("recursive"))
                    folder_btn = gr.Button(i18n("folder_btn"), elem_id="px-ingest-folder")
            progress = gr.HTML(elem_id="px-job-progress")
            # Pausing, resuming and cancelling are writes: behind the API key like activating a model.
            job_buttons = control_buttons("px-job")
            job_note = gr.HTML(elem_id="px-job-control")
            errors = gr.HTML(elem_id="px-job-errors")
            followed = gr.State(None)  # the id of the job shown
        with gr.Tab(i18n("tab_duplicates"), id="duplicates") as duplicates_tab:
            # Finding and resolving are writes: behind the API key like activating a model (see `activate`).
            with gr.Row(equal_height=True):
                threshold = gr.Number(DEFAULT_THRESHOLD, label=i18n("dup_threshold"), info=i18n("dup_threshold_info"),
                                      step=0.01, scale=3, elem_id="px-dup-threshold")
                find_btn = gr.Button(i18n("dup_find_btn"), variant="primary", scale=1, elem_id="px-find-duplicates")
            dup_progress = gr.HTML(elem_id="px-dup-progress")
            dup_buttons = control_buttons("px-dup")
            dup_control = gr.HTML(elem_id="px-dup-control")
            dup_followed = gr.State(None)  # the id of the run shown
            gr.Markdown(i18n("dup_keep_rule"), elem_id="px-dup-rule")
            dup_note = gr.HTML(elem_id="px-dup-message")
            dup_line = gr.HTML(elem_id="px-dup-page")
            dup_shown = gr.State(None)

            @gr.render(inputs=[dup_shown])
            def draw_groups(shown: DuplicatesShown | None, request: gr.Request) -> None:
                """Each group a row of its copies side by side, and its two one-click buttons."""
                if shown is None:
                    return
                lang = _lang(request)
                last = shown.offset + len(shown.groups)
                gr.HTML(f'<p class="px-dup-page" data-offset="{shown.offset}" data-total="{shown.total}">'
                        f'{html.escape(t(lang, "dup_page", first=shown.offset + 1, last=last, total=shown.total))}'
                        "</p>")
                for group in shown.groups:
                    with gr.Column(elem_id=f"px-dup-{group.id}", elem_classes=["px-dup-group"]):
                        gr.HTML(render.group_html(lang, group))
                        with gr.Row():
                            rest_btn = gr.Button(t(lang, "dup_delete_rest"), variant="stop", size="sm", scale=0,
                                                 elem_classes=["px-dup-delete"])
                            keep_btn = gr.Button(t(lang, "dup_keep_all"), size="sm", scale=0,
                                                 elem_classes=["px-dup-keep"])
                    resolved = [dup_note, dup_shown, dup_line, dup_prev, dup_next]
                    rest_btn.click(resolving(group, delete=True), [dup_shown], resolved, concurrency_limit=None)
                    keep_btn.click(resolving(group, delete=False), [dup_shown], resolved, concurrency_limit=None)

            with gr.Row():
                dup_prev = gr.Button(i18n("dup_prev"), interactive=False, elem_id="px-dup-prev")
                dup_next = gr.Button(i18n("dup_next"), interactive=False, elem_id="px-dup-next")
        with gr.Tab(i18n("tab_jobs"), id="jobs") as jobs_tab:
            gr.Markdown(i18n("jobs_intro"), elem_id="px-jobs-intro")
            jobs_html = gr.HTML(elem_id="px-jobs", js_on_load=PICK_ROW)
            with gr.Row():
                jobs_prev = gr.Button(i18n("jobs_prev"), interactive=False, elem_id="px-jobs-prev")
                jobs_next = gr.Button(i18n("jobs_next"), interactive=False, elem_id="px-jobs-next")
                jobs_refresh = gr.Button(i18n("refresh"), elem_id="px-jobs-refresh")
            # Pausing, resuming and cancelling are writes: behind the API key like activating a model. Listing
            # the jobs is too (GET /jobs): the page run on its own sends its --api-key.
            with gr.Row(equal_height=True):
                job_pick = gr.Textbox(label=i18n("jobs_pick"), info=i18n("jobs_pick_info"), max_lines=1, scale=3,
                                      elem_id="px-jobs-pick")
                pick_buttons = (
                    gr.Button(i18n("job_pause"), scale=1, elem_id="px-jobs-pause"),
                    gr.Button(i18n("job_resume"), scale=1, elem_id="px-jobs-resume"),
                    gr.Button(i18n("job_cancel"), variant="stop", scale=1, elem_id="px-jobs-cancel"))
            jobs_note = gr.HTML(elem_id="px-jobs-message")
            jobs_offset = gr.State(0)
            jobs_ticker = gr.Timer(MODELS_POLL_S, active=False)  # on while a job on the page is not finished
        with gr.Tab(i18n("tab_status"), id="status") as status_tab:
            status_md = gr.Markdown(elem_id="px-status")
            gr.Markdown(i18n("models_header"))
            models_html = gr.HTML(elem_id="px-models")
            # the re-embed going on: pause, resume or cancel it
            reembed_label = gr.Markdown(visible=False, elem_id="px-reembed-label")
            reembed_buttons = control_buttons("px-reembed")
            reembed_note = gr.HTML(elem_id="px-reembed-message")
            reembed_job = gr.State(None)  # the id of its job
            # Activating is a write: behind the API key when one is set (see `activate` above).
            with gr.Row(equal_height=True):
                activate_slug = gr.Dropdown([], value=None, label=i18n("activate_model"), info=i18n("activate_info"),
                                            scale=3, elem_id="px-activate-slug")
                activate_btn = gr.Button(i18n("activate_btn"), scale=1, elem_id="px-activate")
            activate_note = gr.HTML(elem_id="px-activate-message")
            refresh = gr.Button(i18n("refresh"), elem_id="px-refresh")
            ticker = gr.Timer(MODELS_POLL_S, active=False)  # on while a re-embed runs: its progress bar moves

        found = [message, gallery, tiles, asked, more_btn]
        panel = [captured_from, captured_to, filter_collections, formats, camera, tags, min_score]
        query_image.upload(by_image, [query_image, top_k, *panel], found, concurrency_limit=4)
        image_btn.click(by_image, [query_image, top_k, *panel], found, concurrency_limit=4)
        query_text.submit(by_text, [query_text, top_k, *panel], found, concurrency_limit=4)
        text_btn.click(by_text, [query_text, top_k, *panel], found, concurrency_limit=4)
        gallery.select(like_this, [tiles, top_k, *panel], found, concurrency_limit=4)
        more_btn.click(more, [asked, tiles], found, concurrency_limit=4)
        pickers = [filter_collections, upload_collection]
        # Following a job mostly sleeps between polls: no reason to make one user wait for another's.
        ingested = [progress, errors, followed, *job_buttons, job_note]
        # The progress animation on the progress only: the buttons stay usable while the job is followed.
        upload_btn.click(upload, [files, upload_collection], ingested, concurrency_limit=None,
                         show_progress_on=[progress]).then(collections, None, pickers, concurrency_limit=None)
        folder_btn.click(ingest, [folder, recursive, upload_collection], ingested, concurrency_limit=None,
                         show_progress_on=[progress]).then(collections, None, pickers, concurrency_limit=None)
        for action, button in zip(ACTIONS, job_buttons, strict=True):
            button.click(controlling(action), [followed], [job_note, *job_buttons], concurrency_limit=None)
        search_tab.select(collections, None, pickers, concurrency_limit=None)
        groups = [dup_shown, dup_line, dup_prev, dup_next]
        # Following a run mostly sleeps between polls, as an ingest does.
        find_btn.click(find_duplicates, [threshold], [dup_progress, dup_note, *groups, dup_followed, *dup_buttons,
                                                      dup_control], concurrency_limit=None,
                       show_progress_on=[dup_progress])
        for action, button in zip(ACTIONS, dup_buttons, strict=True):
            button.click(controlling(action), [dup_followed], [dup_control, *dup_buttons], concurrency_limit=None)
        duplicates_tab.select(show_groups, [dup_shown], groups, concurrency_limit=None)
        dup_prev.click(previous_groups, [dup_shown], groups, concurrency_limit=None)
        dup_next.click(next_groups, [dup_shown], groups, concurrency_limit=None)
        shown_by_status = [banner, status_md, query_text, text_btn, text_off, models_html, activate_slug, ticker,
                           reembed_job, reembed_label, *reembed_buttons]
        refresh.click(status, [activate_slug], shown_by_status, concurrency_limit=None)
        status_tab.select(status, [activate_slug], shown_by_status, concurrency_limit=None)
        ticker.tick(status, [activate_slug], shown_by_status, concurrency_limit=None, show_progress="hidden")
        activate_btn.click(activate, [activate_slug], [activate_note], concurrency_limit=None).then(
            status, [activate_slug], shown_by_status, concurrency_limit=None)
        for action, button in zip(ACTIONS, reembed_buttons, strict=True):
            button.click(controlling(action), [reembed_job], [reembed_note, *reembed_buttons],
                         concurrency_limit=None).then(status, [activate_slug], shown_by_status, concurrency_limit=None)
        listing = [jobs_html, jobs_offset, jobs_prev, jobs_next, jobs_ticker]
        jobs_tab.select(show_jobs, [jobs_offset, job_pick], listing, concurrency_limit=None)
        jobs_refresh.click(show_jobs, [jobs_offset, job_pick], listing, concurrency_limit=None)
        jobs_ticker.tick(show_jobs, [jobs_offset, job_pick], listing, concurrency_limit=None, show_progress="hidden")
        jobs_prev.click(newer_jobs, [jobs_offset, job_pick], listing, concurrency_limit=None)
        jobs_next.click(older_jobs, [jobs_offset, job_pick], listing, concurrency_limit=None)
        jobs_html.click(pick_job, None, [job_pick], concurrency_limit=None, show_progress="hidden")
        for action, button in zip(ACTIONS, pick_buttons, strict=True):
            button.click(acting(action), [job_pick, jobs_offset], [jobs_note, *listing], concurrency_limit=None)
        demo.load(status, [activate_slug], shown_by_status, concurrency_limit=None)
        demo.load(collections, None, pickers, concurrency_limit=None)
    return demo


def control_buttons(prefix: str) -> tuple[gr.Button, gr.Button, gr.Button]:
    """Pause, Resume and Cancel for a followed job (`prefix`-pause, …), hidden until there is one."""
    with gr.Row():
        return (gr.Button(i18n("job_pause"), size="sm", scale=0, visible=False, elem_id=f"{prefix}-pause"),
                gr.Button(i18n("job_resume"), size="sm", scale=0, visible=False, elem_id=f"{prefix}-resume"),
                gr.Button(i18n("job_cancel"), variant="stop", size="sm", scale=0, visible=False,
                          elem_id=f"{prefix}-cancel"))


def _controls(job: Job | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The Pause, Resume and Cancel buttons of a followed job: hidden without one, usable as its state allows
    (none once it is finished)."""
    if job is None:
        return gr.update(visible=False), gr.update(visible=False), gr.update(visible=False)
    going, paused = not job.finished, job.state is JobState.PAUSED
    return (gr.update(visible=True, interactive=going and not paused),
            gr.update(visible=True, interactive=going and paused), gr.update(visible=True, interactive=going))


def _flower_link(flower_url: str, request: gr.Request | None) -> str | None:
    """FLOWER_URL as given, or ':PORT' resolved against the host the page was loaded from."""
    if not flower_url.startswith(":"):
        return flower_url or None
    host = (request.headers.get("host", "") if request is not None else "").rsplit(":", 1)[0] or "localhost"
    return f"http://{host}{flower_url}/"


def mount(app: Any, service: ProximaService, *, path: str = "/ui", allowed_paths: list[str] | None = None,
          max_file_size: str | None = None, auth: Callable[[str, str], bool] | None = None) -> Any:
    """Mount the page into a FastAPI app (the API does this at /ui); `auth` guards it with a login form."""
    return gr.mount_gradio_app(app, build_ui(service), path=path, i18n=i18n, css=CSS, ssr_mode=False,
                               show_error=False, allowed_paths=allowed_paths, max_file_size=max_file_size,
                               footer_links=[], auth=auth,
                               auth_message="Proxima: any user name, the API key as password" if auth else None)
