"""The emwrite service: aligned slices, pyramid and ChunkedGraph endpoints over emprocess."""

from containers.service import build_app

app = build_app("emwrite")
