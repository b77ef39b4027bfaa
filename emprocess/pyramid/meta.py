"""The ``info`` and ``provenance`` files of the JPEG and raw volumes.

The info is written whole, once, before any block task opens the volume (tensorstore would otherwise
have each writer append its scale to a shared file). Provenance follows CloudVolume's layer schema
(description, sources, owners, processing); its date is the first write's, kept on re-runs so that
re-running the task rewrites identical bytes.
"""

from __future__ import annotations

import datetime
import json

from emprocess import __version__, storage
from emprocess.pyramid.layout import PyramidLayout


def write_info(url: str, layout: PyramidLayout, encoding: str, jpeg_quality: int | None) -> str:
    info_url = storage.join(url, "info")
    storage.write_json(info_url, layout.info(encoding, jpeg_quality))
    return info_url


def provenance(description: str, sources: list[str], owners: list[str], method: dict, date: str) -> dict:
    return {
        "description": description,
        "sources": sources,
        "owners": owners,
        "processing": [{"method": method, "by": f"emprocess {__version__}", "date": date}],
    }


def write_provenance(url: str, description: str, sources: list[str], owners: list[str], method: dict) -> str:
    """Write the volume's provenance; an existing one that differs only in its date keeps that date."""
    prov_url = storage.join(url, "provenance")
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    old = storage.read_if_exists(prov_url)
    if old is not None:
        try:
            old_doc = json.loads(old)
            old_date = old_doc["processing"][0]["date"]
        except (ValueError, KeyError, IndexError, TypeError):
            old_date = None
        if old_date is not None and old_doc == provenance(description, sources, owners, method, old_date):
            date = old_date
    storage.write_json(prov_url, provenance(description, sources, owners, method, date))
    return prov_url
