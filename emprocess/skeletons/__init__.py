"""Skeletons of the ChunkedGraph's bodies (sharded neuroglancer_skeletons), traced by kimimaro chunk by
chunk on the root-ID layer and merged per body: ``stages`` (plans), ``contracts`` (payload and result
models), ``pieces`` (the per-chunk jobs), ``merge`` (the per-shard jobs), ``layout`` (format and
locations)."""
