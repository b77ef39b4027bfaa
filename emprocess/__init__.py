"""emprocess: EM stack ingestion (alignment, neuroglancer pyramids, ChunkedGraph, meshes)."""

__version__ = "0.1.0"

MAJOR_MINOR = ".".join(__version__.split(".")[:2])
