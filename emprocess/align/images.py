"""Reading EM slices from any storage URL.

``read_image`` decodes a whole 8- or 16-bit grayscale PNG or TIFF; ``image_size`` reads only the
header (a few KiB through a byte-range read), so validating or sizing thousands of 20k×20k slices
never downloads them. Both name the URL in every error: a missing object raises FileNotFoundError,
anything unreadable raises InputError (a 4xx for the services, never retried).
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from emprocess import storage
from emprocess.stages import InputError

HEAD_BYTES = 64 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_WIDTH, TIFF_LENGTH = 256, 257
# TIFF field type → (struct code, size) for the integer types a width/length may use
TIFF_INTEGERS = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def read_image(url: str) -> np.ndarray:
    """The slice at ``url`` as a 2-D uint8 or uint16 array (rows = y).

    Colour images, other sample types and undecodable bytes are InputErrors naming the URL.
    """
    data = np.frombuffer(storage.read(_checked(url)), np.uint8)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error:
        image = None
    del data
    if image is None:
        raise InputError(f"{url}: not a readable PNG or TIFF image")
    if image.ndim != 2:
        raise InputError(f"{url}: colour image ({image.shape[2]} channels); slices must be grayscale")
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{url}: {image.dtype} samples; slices must be 8- or 16-bit")
    return image


def image_size(url: str) -> tuple[int, int]:
    """(width, height) of the PNG or TIFF at ``url``, from its header only."""
    head = storage.read_range(_checked(url), 0, HEAD_BYTES)
    if head.startswith(PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise InputError(f"{url}: truncated PNG header")
        return struct.unpack(">II", head[16:24])
    if head[:2] in (b"II", b"MM"):
        return _tiff_size(url, head)
    raise InputError(f"{url}: not a PNG or TIFF image")


def _checked(url: str) -> str:
    """``url`` itself, or an InputError when it is not a usable storage URL."""
    try:
        storage.parse(url)
    except storage.StorageError as err:
        raise InputError(str(err)) from None
    return url


def _tiff_size(url: str, head: bytes) -> tuple[int, int]:
    """Width and length from the first IFD of a classic or Big TIFF."""
    order = "<" if head[:2] == b"II" else ">"
    try:
        (magic,) = struct.unpack(order + "H", head[2:4])
        if magic == 42:  # classic: 4-byte offsets, 2-byte entry count, 12-byte entries
            (ifd,) = struct.unpack(order + "I", head[4:8])
            count_code, entry_size, value_size = "H", 12, 4
        elif magic == 43:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
            (ifd,) = struct.unpack(order + "Q", head[8:16])
            count_code, entry_size, value_size = "Q", 20, 8
        else:
            raise InputError(f"{url}: not a TIFF image (magic {magic})")
        count_size = struct.calcsize(count_code)
        (entries,) = struct.unpack(order + count_code, _block(url, head, ifd, count_size))
        table = _block(url, head, ifd + count_size, entries * entry_size)
    except struct.error:
        raise InputError(f"{url}: truncated TIFF header") from None
    size: dict[int, int] = {}
    for i in range(entries):
        entry = table[i * entry_size : (i + 1) * entry_size]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (TIFF_WIDTH, TIFF_LENGTH) and kind in TIFF_INTEGERS:
            code, nbytes = TIFF_INTEGERS[kind]
            value = entry[entry_size - value_size : entry_size - value_size + nbytes]
            (size[tag],) = struct.unpack(order + code, value)
    if TIFF_WIDTH not in size or TIFF_LENGTH not in size:
        raise InputError(f"{url}: TIFF without image width/length")
    return size[TIFF_WIDTH], size[TIFF_LENGTH]


def _block(url: str, head: bytes, start: int, length: int) -> bytes:
    """``length`` bytes at ``start``: from the already-read head when it holds them."""
    if start + length <= len(head):
        block = head[start : start + length]
    else:
        block = storage.read_range(url, start, start + length)
    if len(block) != length:
        raise InputError(f"{url}: truncated TIFF header")
    return block
