"""The alignment ("fiji") service: POST /align over emprocess.align."""

from containers.service import build_app

app = build_app("fiji")
