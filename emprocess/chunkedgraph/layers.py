"""How many layers a graph may have, and how many DAG workers each layer gets.

Plain Python, no numpy: the DAG file needs both, and its parse should not pay for numpy.
"""

# 12 layers = up to 2^10 = 1024 layer-2 chunks per axis (262 144 voxels per axis at 256³ chunks),
# which is also what ids.SPATIAL_BITS can address.
MAX_LAYERS = 12


def layer_width(layer: int, width: int) -> int:
    """Workers for layer ``layer``'s sub-group in a DAG of width ``width``: no more than the chunks
    that layer can have in the largest graph (8^(MAX_LAYERS − layer)); data-independent."""
    return max(1, min(width, 8 ** max(0, MAX_LAYERS - layer)))
