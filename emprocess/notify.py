"""The mail a run sends to its conf's ``email`` when it ends: whether it succeeded, which tasks failed,
and where its outputs and report are. Composed here from the conf and the run's storage; the
workflow sends it (over the SMTP connection) after every other task is done.

Values from the conf, from storage and from task ids are HTML-escaped: a conf is user input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape

from emprocess import storage
from emprocess.config import EMAIL_PATTERN, ConfError
from emprocess.stages import RunContext


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    html: str


def recipient(conf: dict) -> str | None:
    """The address to notify, if the conf names a well-formed one (read from the raw conf, so a run
    whose conf was refused can still say so)."""
    address = conf.get("email") if isinstance(conf, dict) else None
    return address if isinstance(address, str) and re.match(EMAIL_PATTERN, address) else None


def run_ended_mail(conf: dict, run_id: str, failed: list[str], not_run: int) -> Mail | None:
    """The mail for a run that ended, or None when the conf names no address. ``failed``: the tasks
    that failed (``task[i]`` for worker i); ``not_run``: how many did not run because of them."""
    to = recipient(conf)
    if to is None:
        return None
    dataset = str(conf.get("id", "?"))
    outcome = "failed" if failed else "succeeded"
    parts = [f"<p>emprocess run <b>{escape(run_id)}</b> of <b>{escape(dataset)}</b> {outcome}.</p>"]
    if failed:
        parts.append("<p>Failed tasks (their logs are in Airflow):</p><ul>"
                     + "".join(f"<li>{escape(name)}</li>" for name in failed) + "</ul>")
        if not_run:
            parts.append(f"<p>{not_run} later tasks did not run. Clearing the failed tasks, or running the same "
                         "run again, resumes it: finished work is skipped.</p>")
    try:
        ctx = RunContext.create(conf, run_id)
    except ConfError as err:
        parts.append(f"<p>The run conf was refused: {escape(str(err))}</p>")
    else:
        parts.append(_locations(ctx))
    subject = " ".join(f"emprocess: {dataset} run {run_id} {outcome}".split())  # one header line, whatever the id
    return Mail(to=to, subject=subject, html="\n".join(parts))


def _locations(ctx: RunContext) -> str:
    """Report, outputs and neuroglancer link, as ``publish`` recorded them (complete.json), or the
    run's process location when it did not get that far."""
    process = ctx.locations.process
    report = ctx.locations.report("html")
    rows = [("report", report)] if storage.exists(report) else [("process location", process)]
    complete = storage.read_json_if_exists(ctx.locations.complete)
    if complete:
        rows += [(name, url) for name, url in complete["outputs"].items() if url]
        if complete.get("neuroglancer"):
            rows.append(("neuroglancer", complete["neuroglancer"]))
    return "<ul>" + "".join(f"<li>{escape(name)}: {escape(url)}</li>" for name, url in rows) + "</ul>"
