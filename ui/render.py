"""What the page shows: HTML and text from jobs, groups of near-duplicates, health, the model identities and
search results, in the reader's language. No Gradio components, state or requests: `ui.app` builds the page and
its handlers put these into it.
"""

from __future__ import annotations

import html
import math
import urllib.parse
from datetime import UTC, datetime
from typing import Any, Literal

from shared.types import Job, JobState
from ui.service import DuplicateGroup, Result
from ui.text import t

ERRORS_SHOWN = 200
Action = Literal["pause", "resume", "cancel"]


def note(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def caption(result: Result) -> str:
    """`0.912 · 2024-06-30 · Trip 2024 · IMG_0042.jpg`: what is known of it, the filename last."""
    parts = [f"{result.score:.3f}"]
    if result.captured_at is not None:
        parts.append(result.captured_at.date().isoformat())
    if result.collections:
        parts.append(", ".join(result.collections))
    return " · ".join([*parts, result.filename])


def controlled(lang: str, action: Action, job: Job) -> str:
    """What a pause, resume or cancel did, from the job it returned."""
    if action == "pause":
        return t(lang, "control_paused", job=job.job_id)
    if action == "resume":
        return t(lang, "control_resumed", job=job.job_id, state=t(lang, f"state_{job.state.value}"))
    return t(lang, "control_cancelled", job=job.job_id, done=job.done, failed=job.failed, dropped=job.remaining)


def progress(lang: str, job: Job) -> str:
    processed = job.done + job.failed
    state = t(lang, f"state_{job.state.value}")
    if job.kind == "duplicates":  # open while it runs: images searched, not indexed, and no walk
        text = t(lang, "dup_progress", job=job.job_id, state=state, done=job.done, total=job.total)
    else:
        text = t(lang, "job_progress", job=job.job_id, state=state, done=job.done, failed=job.failed,
                 total=job.total)
    if job.kind not in ("upload", "reembed", "duplicates") and job.seen:
        text += t(lang, "job_seen", seen=job.seen, skipped=job.skipped)
    paused, cancelled = job.state is JobState.PAUSED, job.state is JobState.CANCELLED
    if job.rate_per_s:
        text += t(lang, "job_rate", rate=job.rate_per_s)
    if job.eta_s and not paused and not cancelled:  # a paused job has none: it waits for a resume
        text += t(lang, "job_eta", eta=job.eta_s)
    if job.walking and job.kind != "duplicates" and not paused:
        text += t(lang, "job_walking_store" if job.kind == "reembed" else "job_walking")
    if job.interrupted:
        text += t(lang, "dup_interrupted" if job.kind == "duplicates" else "job_interrupted")
    if paused:
        text += t(lang, "job_paused")
    if cancelled:  # what was done stays; the rest was dropped
        text += t(lang, "dup_dropped" if job.kind == "duplicates" else "job_dropped", dropped=job.remaining)
    maximum = max(job.total, 1)
    dropped = f' data-dropped="{job.remaining}"' if cancelled else ""
    return (f'<div class="px-progress" data-job="{html.escape(job.job_id)}" '
            f'data-state="{html.escape(job.state.value)}" data-done="{job.done}" data-failed="{job.failed}" '
            f'data-total="{job.total}"{dropped}>'
            f'<progress value="{min(processed, maximum)}" max="{maximum}"></progress>'
            f"<p>{html.escape(text)}</p></div>")


def errors(lang: str, job: Job) -> str:
    if not job.errors:
        return ""
    rows = "".join(f"<li><b>{html.escape(e.filename or '?')}</b>: {html.escape(e.message)}</li>"
                   for e in job.errors[:ERRORS_SHOWN])
    more = f"<li>… {len(job.errors) - ERRORS_SHOWN}</li>" if len(job.errors) > ERRORS_SHOWN else ""
    return f"<details open><summary>{html.escape(t(lang, 'errors_header'))}</summary><ul>{rows}{more}</ul></details>"


def _src(image: str) -> str:
    """A thumbnail as the browser loads it: a URL as it is; a local file (the page mounted in the API, whose
    images folder Gradio may serve) through Gradio's file route, relative to the page."""
    if image.startswith(("http://", "https://")):
        return image
    return "gradio_api/file=" + urllib.parse.quote(image)


def _file_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} KB" if size < 1024 ** 2 else f"{size / 1024 ** 2:.1f} MB"


def group_html(lang: str, group: DuplicateGroup) -> str:
    """A group's copies side by side: thumbnail, the keeper's mark or the similarity to it, resolution, file
    size, capture date and filename."""
    cards = []
    for m in group.members:
        mark = (f'<b class="px-dup-mark">{html.escape(t(lang, "dup_keeper"))}</b>' if m.keeper
                else html.escape(t(lang, "dup_similarity", score=math.floor(m.score * 10_000) / 10_000)))  # 0.9999…
        taken = m.captured_at.strftime("%Y-%m-%d %H:%M") if m.captured_at else t(lang, "dup_no_date")
        facts = "".join(f"<br><span class=\"px-dup-{name}\">{html.escape(value)}</span>" for name, value in (
            ("resolution", f"{m.width} × {m.height}"), ("size", _file_size(m.size_bytes)), ("date", taken),
            ("filename", m.filename)))
        cards.append(f'<figure class="px-dup-copy{" px-dup-keeper" if m.keeper else ""}" data-id="{html.escape(m.id)}" '
                     f'data-keeper="{"true" if m.keeper else "false"}">'
                     f'<img src="{html.escape(_src(m.image))}" alt="{html.escape(m.filename)}" loading="lazy">'
                     f"<figcaption>{mark}{facts}</figcaption></figure>")
    return f'<div class="px-dup-row" data-group="{html.escape(group.id)}">{"".join(cards)}</div>'


def status(lang: str, health: dict[str, Any], flower: str | None) -> str:
    unknown = t(lang, "unknown")
    model = health.get("model") or {}
    model_text = (f"{model.get('extractor', unknown)}: {model.get('name', unknown)} / "
                  f"{model.get('pretrained', unknown)} (dim {model.get('dim', '?')})")
    lines = [
        f"- **{t(lang, 'status_backend')}**: {health.get('backend', unknown)}",
        f"- **{t(lang, 'status_model')}**: {model_text}",
        f"- **{t(lang, 'status_vectors')}**: {health.get('vectors') if health.get('vectors') is not None else unknown}",
        f"- **{t(lang, 'status_queue')}**: "
        f"{health.get('queue_depth') if health.get('queue_depth') is not None else unknown}",
    ]
    if flower:
        lines.append(f"- **{t(lang, 'status_flower')}**: [{flower}]({flower})")
    if model.get("random"):
        lines.insert(0, t(lang, "random_warning") + "\n")
    problems = health.get("problems") or []
    lines.append("")
    lines.append(f"**{t(lang, 'status_problems')}**: " + "; ".join(problems) if problems else t(lang, "status_ok"))
    return "\n".join(lines)


def model_job(model: dict[str, Any]) -> Job | None:
    """The re-embed job of one entry of `/admin/models` (None when there is none, or it is unreadable)."""
    try:
        return Job.from_dict(model["job"]) if model.get("job") else None
    except (KeyError, TypeError, ValueError):
        return None


def state_text(lang: str, model: dict[str, Any]) -> str:
    state = str(model.get("state", ""))
    return t(lang, f"model_state_{state}") if state in ("active", "building", "retired") else state


def models(lang: str, models: list[dict[str, Any]]) -> str:
    """The model identities as a table: state, model, slug, dimension, vectors, and a building one's progress."""
    if not models:
        return note(t(lang, "models_none"))
    unknown = t(lang, "unknown")
    head = "".join(f"<th>{html.escape(t(lang, key))}</th>" for key in (
        "models_state", "models_model", "models_slug", "models_dim", "models_vectors", "models_progress"))
    rows = []
    for m in models:
        state = str(m.get("state", ""))
        job = model_job(m)
        if state != "building":
            reembed = ""
        elif job is None:
            reembed = note(t(lang, "model_no_job"))
        else:
            reembed = progress(lang, job)
        if state == "building" and job is not None and job.state is JobState.CANCELLED:
            reembed += note(t(lang, "model_reembed_cancelled"))
        elif state == "building" and m.get("activate_when_done"):
            reembed += note(t(lang, "model_activates_itself"))
        vectors = m.get("vectors")
        shown = html.escape(state_text(lang, m))
        rows.append(
            f'<tr data-slug="{html.escape(str(m.get("slug", "")))}" data-state="{html.escape(state)}">'
            f"<td>{f'<b>{shown}</b>' if state == 'active' else shown}</td>"
            f"<td>{html.escape(str(m.get('model', unknown)))}</td>"
            f"<td><code>{html.escape(str(m.get('slug', unknown)))}</code></td>"
            f'<td class="px-num">{html.escape(str(m.get("dim") or "?"))}</td>'
            f'<td class="px-num px-vectors">{html.escape(str(vectors) if vectors is not None else unknown)}</td>'
            f'<td class="px-reembed">{reembed}</td></tr>')
    return f'<table class="px-models"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _duration(seconds: float) -> str:
    """`42 s`, `3 min 5 s`, `2 h 10 min`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S") if timestamp else ""


def jobs_table(lang: str, offset: int, total: int, jobs: list[Job], picked: str = "") -> str:
    """A page of jobs as a table (a row a job, `picked` marked): kind, state, done of total, failed, rate, time
    left, when it started, its folder or label, its id. Each row carries the job's id and counts as data."""
    if not jobs:
        return note(t(lang, "jobs_none"))
    head = "".join(f"<th>{html.escape(t(lang, key))}</th>" for key in (
        "jobs_kind", "jobs_state", "jobs_done", "jobs_failed", "jobs_rate", "jobs_eta", "jobs_started", "jobs_path",
        "jobs_id"))
    rows = []
    for job in jobs:
        kind = t(lang, f"kind_{job.kind}") if job.kind in ("upload", "folder", "reembed", "duplicates") else job.kind
        state = t(lang, f"state_{job.state.value}")
        dropped = ""
        if job.state is JobState.CANCELLED:
            state += " · " + t(lang, "jobs_dropped", dropped=job.remaining)
            dropped = f' data-dropped="{job.remaining}"'
        total_shown = f"{job.total}…" if job.walking else str(job.total)  # still growing while its walk goes on
        eta = _duration(job.eta_s) if job.eta_s and job.state is not JobState.PAUSED else "—"
        started = _when(job.started_at) or ("—" if job.finished else t(lang, "jobs_not_started"))
        selected = ' aria-selected="true"' if picked and job.job_id == picked else ""
        rows.append(
            f'<tr tabindex="0" data-job="{html.escape(job.job_id)}" data-kind="{html.escape(job.kind)}" '
            f'data-state="{html.escape(job.state.value)}" data-done="{job.done}" data-failed="{job.failed}" '
            f'data-total="{job.total}"{dropped}{selected} title="{html.escape(_when(job.created_at))}">'
            f"<td>{html.escape(kind)}</td>"
            f'<td class="px-job-state">{html.escape(state)}</td>'
            f'<td class="px-num">{job.done} / {total_shown}</td>'
            f'<td class="px-num">{job.failed}</td>'
            f'<td class="px-num">{f"{job.rate_per_s:.1f}" if job.rate_per_s else "—"}</td>'
            f'<td class="px-num">{html.escape(eta)}</td>'
            f"<td>{html.escape(started)}</td>"
            f'<td class="px-job-path">{html.escape(job.path or "")}</td>'
            f"<td><code>{html.escape(job.job_id)}</code></td></tr>")
    last = offset + len(jobs)
    line = t(lang, "jobs_page", first=offset + 1, last=last, total=total)
    return (f'<p class="px-jobs-page" data-offset="{offset}" data-total="{total}">{html.escape(line)}</p>'
            f'<table class="px-jobs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
