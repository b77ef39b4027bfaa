"""``report.html``: the run summary as one static page, readable without a server or scripts.

Thumbnails are linked by paths relative to the process location, where the page is written, so the
page shows them when opened from a local folder or a downloaded copy of the process location.
Every value from the conf or from storage is HTML-escaped: a conf is user input.
"""

from __future__ import annotations

import json
from html import escape

MAX_THUMBNAILS = 120  # a long stack shows every n-th slice, so the page stays light
CHART_WIDTH, CHART_HEIGHT, CHART_MARGIN = 720, 160, 40

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.missing { color: #b00; } .done { color: #070; }
figure { display: inline-block; margin: 0.3em; text-align: center; font-size: 12px; }
figure img { width: 160px; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
svg text { font-size: 11px; fill: #444; }
"""


def thumbnail_step(count: int) -> int:
    """The page shows every n-th of ``count`` thumbnails: all of them, or fewer of a long stack."""
    return max(1, -(-count // MAX_THUMBNAILS))


def shown_thumbnails(thumbnails: list[dict]) -> list[dict]:
    return thumbnails[::thumbnail_step(len(thumbnails))]


def render(summary: dict, previews: dict[str, str] | None = None) -> str:
    """The page; ``previews`` maps thumbnail paths to the data URIs shown for them (a thumbnail
    without one is shown from its path, relative to the page)."""
    state = "complete" if summary["complete"] else "not complete"
    sections = [
        f"<h1>emprocess run {escape(summary['run_id'])}</h1>",
        f"<p class=\"{'done' if summary['complete'] else 'missing'}\">{state}; started "
        f"{escape(str(summary['started']))}, finished {escape(str(summary['finished']))}</p>",
        _failures(summary.get("failures") or []),
        _outputs(summary),
        _stages(summary["stages"]),
        _alignment(summary["alignment"]),
        _thumbnails(summary["thumbnails"], previews or {}),
        "<h2>Run conf</h2>",
        f"<pre>{escape(json.dumps(summary['conf'], indent=2, sort_keys=True))}</pre>",
        "<h2>Versions</h2>",
        f"<pre>{escape(json.dumps(summary['versions'], indent=2, sort_keys=True))}</pre>",
    ]
    return _page(summary["run_id"], sections)


def render_refused(run_id: str, conf: dict, failures: list[dict]) -> str:
    """The page of a run whose conf ``validate`` refused: it wrote nothing, so the page is made from
    what Airflow recorded (the failed tasks and their errors) and shown without a file behind it."""
    sections = [
        f"<h1>emprocess run {escape(run_id)}</h1>",
        "<p class=\"missing\">refused: the run conf was not accepted, so nothing was read or written</p>",
        _failures(failures),
        "<h2>Run conf</h2>",
        f"<pre>{escape(json.dumps(conf, indent=2, sort_keys=True))}</pre>",
    ]
    return _page(run_id, sections)


def _page(run_id: str, sections: list[str]) -> str:
    body = "\n".join(sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>emprocess run {escape(run_id)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"number\">{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _failures(failures: list[dict]) -> str:
    if not failures:
        return ""
    rows = [[escape(f["task"]), f"<pre>{escape(str(f.get('error') or 'no error recorded'))}</pre>"] for f in failures]
    return "<h2 class=\"missing\">Failed</h2>\n" + _table(["task", "error"], rows)


def _outputs(summary: dict) -> str:
    parts = ["<h2>Outputs</h2>"]
    if summary["neuroglancer"]:
        link = escape(summary["neuroglancer"], quote=True)
        parts.append(f"<p><a href=\"{link}\">Open in neuroglancer</a></p>")
    elif summary["locations"]["ng"].startswith("file://"):
        parts.append("<p>To view: <code>emprocess serve DIR</code> with DIR a folder above the outputs, "
                     "then open the neuroglancer link it prints.</p>")
    outputs = summary["outputs"] or {}
    rows = [[escape(name), escape(url)] for name, url in outputs.items() if url]
    rows.append(["process location", escape(summary["locations"]["process"])])
    parts.append(_table(["output", "location"], rows))
    return "\n".join(parts)


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(value, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{seconds:04.1f}" if hours else f"{minutes}:{seconds:04.1f}"


def _stages(stages: list[dict]) -> str:
    rows = []
    for stage in stages:
        if stage["total"] == 0:
            continue  # not asked for by this run (or a graph layer above its root)
        total = "not planned yet" if stage["total"] is None else str(stage["total"])
        finished = stage["total"] is not None and stage["done"] == stage["total"]
        done = f"<span class=\"{'done' if finished else 'missing'}\">{stage['done']} / {total}</span>"
        rows.append([escape(stage["stage"]), done, _seconds(stage["task_seconds"]), _seconds(stage["wall_seconds"]),
                     escape(str(stage["started"] or "–"))])
    header = ["stage", "mini-tasks done", "task time (sum)", "first start to last end", "first start"]
    return "<h2>Stages</h2>\n" + _table(header, rows, numeric={1, 2, 3})


def _alignment(alignment: dict | None) -> str:
    if alignment is None:
        return "<h2>Alignment</h2>\n<p>No alignment yet (align.collect has not run).</p>"
    parts = ["<h2>Alignment</h2>",
             f"<p>{alignment['slices']} slices, mode {escape(alignment['mode'])} "
             f"({escape(alignment['align_mode'])}), aligned frame "
             f"{alignment['width']} × {alignment['height']} px; {len(alignment['fallbacks'])} pairs fell back, "
             f"{len(alignment['deformed'])} deformed, {len(alignment['replaced'])} slices replaced.</p>"]
    if alignment["reused_from"]:
        parts.append(f"<p>Transforms reused from {escape(alignment['reused_from'])}.</p>")
    if alignment["replaced"]:
        parts.append(_table(["replaced slice", "copy of", "why"],
                            [[str(e["z"]), str(e["copy_of"]), escape(e["reason"])] for e in alignment["replaced"]],
                            numeric={0, 1}))
    pairs = alignment["pairs"]
    if pairs:
        flagged = {p["z"] for p in pairs if p["fallback"]}
        parts.append(_chart("inliers of the model used", [(p["z"], p["inliers"]) for p in pairs], flagged))
        parts.append(_chart("residual (px)", [(p["z"], p["residual_px"]) for p in pairs], flagged))
        rows = [[str(p["z"]), escape(p["model"]), str(p["inliers"]), escape(str(p["reason"]))]
                for p in pairs if p["fallback"] or p["deformed"]]
        if rows:
            parts.append(_table(["pair from z", "model", "inliers", "why it is flagged"], rows, numeric={0, 2}))
        if alignment["align_mode"] == "elastic":
            residual = {p["z"]: p["elastic_px"] for p in pairs}
            worst = alignment["worst_elastic"]
            parts.append(_chart("elastic residual (px RMS)", list(residual.items()), set(worst)))
            parts.append(_table(["worst pair from z", "elastic residual (px RMS)"],
                                [[str(z), f"{residual[z]:g}"] for z in worst], numeric={0, 1}))
    return "\n".join(parts)


def _chart(label: str, points: list[tuple[int, float | None]], flagged: set[int]) -> str:
    """An SVG line chart of one value per pair; ``flagged`` pairs (fallbacks, or the worst elastic ones)
    are red dots at their value (or on the axis when there is none)."""
    zs = [z for z, _ in points]
    values = [v for _, v in points if v is not None]
    top = max(values, default=0) or 1
    first, last = min(zs), max(zs)
    width, height = CHART_WIDTH - 2 * CHART_MARGIN, CHART_HEIGHT - 2 * CHART_MARGIN

    def xy(z: int, value: float | None) -> tuple[float, float]:
        x = CHART_MARGIN + (width * (z - first) / (last - first) if last > first else width / 2)
        return x, CHART_MARGIN + height * (1 - (value or 0) / top)

    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(z, v) for z, v in points if v is not None))
    dots = "".join(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='#c00'><title>pair {z}</title></circle>"
                   for z, v in points if z in flagged for x, y in [xy(z, v)])
    left, right, bottom = CHART_MARGIN, CHART_MARGIN + width, CHART_MARGIN + height
    return (f"<figure><svg width='{CHART_WIDTH}' height='{CHART_HEIGHT}' role='img' "
            f"aria-label='{escape(label, quote=True)} per pair'>"
            f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='#888'/>"
            f"<line x1='{left}' y1='{CHART_MARGIN}' x2='{left}' y2='{bottom}' stroke='#888'/>"
            f"<polyline points='{line}' fill='none' stroke='#26a' stroke-width='1.5'/>{dots}"
            f"<text x='{left}' y='{CHART_MARGIN - 8}'>{escape(label)}, max {top:g}</text>"
            f"<text x='{left}' y='{bottom + 16}'>z {first}</text>"
            f"<text x='{right}' y='{bottom + 16}' text-anchor='end'>z {last}</text></svg></figure>")


def _thumbnails(thumbnails: list[dict], previews: dict[str, str]) -> str:
    if not thumbnails:
        return "<h2>Aligned slices</h2>\n<p>No thumbnails yet.</p>"
    step = thumbnail_step(len(thumbnails))
    shown = thumbnails[::step]
    note = f" (one slice in {step}, of {len(thumbnails)})" if step > 1 else ""
    figures = "".join(f"<figure><a href=\"{escape(t['path'], quote=True)}\"><img loading=\"lazy\" "
                      f"src=\"{escape(previews.get(t['path'], t['path']), quote=True)}\" "
                      f"alt=\"slice {t['z']}\"></a>"
                      f"<figcaption>z {t['z']}</figcaption></figure>" for t in shown)
    return f"<h2>Aligned slices{note}</h2>\n<div>{figures}</div>"
