"""ChunkedGraph ingest without Bigtable or redis (ARCHITECTURE §6).

Modules: ids (node/chunk ID layout, layer count) · layers (MAX_LAYERS, DAG workers per layer) · meta
(graph meta, chunk grid) · inputs (the segmentation inputs' checks, for validate and cg.meta) ·
prepare (cg.meta job) · agglomeration (supervoxel → body table) · edges (voxel contacts, components)
· layer2 (layer-2 job) · parents (parent-layer job) · finish + chunkfile (the one file per chunk) ·
reader (root, roots, parent, children, leaves, layer) · flatten + downsample (root-ID segmentation)
· properties (its segment properties) · contracts (the stages' payload and result models) · stages
(Stage objects, ``status``, ``chunk_task``).

What a graph holds, under ``<chunk>/chunkedgraph/``: ``meta.json``; ``agglomeration/<n>`` (the
sorted table in shards); ``supervoxels/`` (precomputed: the chunk-local layer-1 IDs);
``layer_<L>/<x>_<y>_<z>`` (one immutable file per chunk job); ``body_counts/<x>_<y>_<z>`` (each
flatten job's counts per root). The root-ID segmentation goes to ``<ng>/neuroglancer/segmentation``.
"""
