"""Aligned slices and the sharded neuroglancer pyramid (JPEG for viewing, gzip raw for analysis).

layout (scales, sharding, blocks) · intensity (16→8-bit rule) · warp (warp, CLAHE, thumbnail) ·
aligned (the align.warp work) · downsample (2×2×2 mean) · writers (tensorstore volumes) ·
chunks (encoding chunks into shards) · meta (info, provenance) · build (block and top scales) ·
stages (plans, Stage objects) · viewer.
"""
