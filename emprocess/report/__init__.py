"""The run report: ``report.json`` and a static ``report.html`` in the run's process location.

Both are made from what the run left in storage alone, so a report can be made for any run, finished
or not: by the DAG's report task, or by ``emprocess report`` for a run that failed or is still going.
The page embeds small previews of the slices it shows, so it needs no other file to be read.
"""

from __future__ import annotations

from emprocess import storage
from emprocess.report.page import render, shown_thumbnails
from emprocess.report.previews import previews
from emprocess.report.summary import run_summary
from emprocess.run_layout import REPORT_FILES
from emprocess.stages import RunContext, Stage


def refused_report(failures: list[dict]) -> dict:
    """The report of a run whose conf was refused: it may write nothing, so the report is the report
    task's result in Airflow (what the tab and the mail show)."""
    return {"written": False, "refused": failures}


def refusal(report: object) -> list[dict] | None:
    """The failures of a refused run's report (the report task's result), or None for any other."""
    if isinstance(report, dict) and report.get("written") is False:
        return report.get("refused") or []
    return None


def write_report(ctx: RunContext, stages: list[Stage], failures: list[dict] | None = None) -> dict:
    """Write report.json and report.html; returns their URLs. ``failures``: the run's failed tasks,
    ``{"task", "error"}`` each (the DAG's report task knows them; storage does not)."""
    summary = {**run_summary(ctx, stages), "failures": failures or []}
    urls = {kind: ctx.locations.report(kind) for kind in REPORT_FILES}
    storage.write_json(urls["json"], summary)
    shown = [t["path"] for t in shown_thumbnails(summary["thumbnails"])]
    storage.write(urls["html"], render(summary, previews(ctx.locations.process, shown)).encode())
    return urls
