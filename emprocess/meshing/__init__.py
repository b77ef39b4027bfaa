"""Multi-resolution meshes of the ChunkedGraph's bodies (neuroglancer_multilod_draco, sharded), one
level of detail per graph layer: ``stages`` (plan), ``contracts`` (payload and result models),
``levels`` (the per-chunk jobs), ``fragments`` (format), ``shards`` (the shard files), ``layout``
(octree and locations)."""
