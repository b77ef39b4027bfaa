"""Reading EM slices from any storage URL.

``read_image`` decodes a whole 8- or 16-bit grayscale PNG or TIFF; ``read_header`` reads only the
header (a few KiB through a byte-range read: size, channels, bit depth, sample type, TIFF
compression), so validating or sizing thousands of 20k×20k slices never downloads them. Both name
the URL in every error: a missing object raises FileNotFoundError, anything unreadable raises
InputError (a 4xx for the services, never retried).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from emprocess import storage
from emprocess.stages import InputError

HEAD_BYTES = 64 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_BIT_DEPTHS = (1, 2, 4, 8, 16)
# PNG colour type → (what it is, channels)
PNG_COLOURS = {0: ("grayscale", 1), 2: ("RGB colour", 3), 3: ("palette colour", 1), 4: ("grayscale+alpha", 2),
               6: ("RGBA colour", 4)}
OTHER_FORMATS = {b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"\x00\x00\x00\x0cjP  ": "JPEG 2000"}
TIFF_WIDTH, TIFF_LENGTH, TIFF_BITS, TIFF_COMPRESSION, TIFF_PHOTOMETRIC, TIFF_SAMPLES, TIFF_SAMPLE_FORMAT = (
    256, 257, 258, 259, 262, 277, 339)
# TIFF field type → (struct code, size) for the integer types these tags may use
TIFF_INTEGERS = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}
TIFF_PHOTOMETRICS = {0: "grayscale", 1: "grayscale", 2: "RGB colour", 3: "palette colour", 4: "a transparency mask",
                     5: "CMYK colour", 6: "YCbCr colour", 8: "CIELab colour"}
TIFF_MAX_ENTRIES = 1000  # real first directories hold a few dozen; more is a damaged count
TIFF_SAMPLE_FORMATS = {1: "unsigned", 2: "signed", 3: "float", 4: "undefined"}
# TIFF compressions OpenCV's libtiff decodes (measured with opencv-python 5.0): none, LZW, JPEG, Deflate,
# PackBits, old Deflate. Others (ZSTD, LZMA, WebP, JPEG 2000, ...) fail only when a slice is decoded.
TIFF_DECODABLE = {1, 5, 7, 8, 32773, 32946}


@dataclass(frozen=True)
class Header:
    """What a slice's header says: enough to refuse a stack without decoding any of it."""

    format: str  # "PNG" or "TIFF"
    width: int
    height: int
    colour: str  # "grayscale", or what else: "RGB colour", "grayscale+alpha", ...
    channels: int
    bits: int  # per sample
    sample: str = "unsigned"  # or "signed", "float", "undefined"
    compression: int | None = None  # TIFF's compression tag (PNG has one method)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def problem(self) -> str | None:
        """Why ``read_image`` would refuse a slice with this header (a phrase to follow its name), or None."""
        if self.colour != "grayscale":
            return f"is {self.colour}, not grayscale"
        if self.channels != 1:
            return f"has {self.channels} channels, not 1 (grayscale)"
        if self.sample != "unsigned" or self.bits not in (8, 16):
            return f"has {self.bits}-bit {self.sample} samples, not 8- or 16-bit unsigned"
        if self.compression is not None and self.compression not in TIFF_DECODABLE:
            return f"uses TIFF compression {self.compression}, which OpenCV cannot decode"
        return None


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
    return read_header(url).size


def read_header(url: str) -> Header:
    """The header of the PNG or TIFF at ``url``; InputError when it is damaged or another format."""
    head = storage.read_range(_checked(url), 0, HEAD_BYTES)
    if not head:
        raise InputError(f"{url}: empty file")
    if head.startswith(PNG_SIGNATURE):
        return _png_header(url, head)
    if head[:2] in (b"II", b"MM"):
        return _tiff_header(url, head)
    other = next((name for magic, name in OTHER_FORMATS.items() if head.startswith(magic)), None)
    raise InputError(f"{url}: not a PNG or TIFF image" + (f" (it is a {other})" if other else ""))


def _checked(url: str) -> str:
    """``url`` itself, or an InputError when it is not a usable storage URL."""
    try:
        storage.parse(url)
    except storage.StorageError as err:
        raise InputError(str(err)) from None
    return url


def _png_header(url: str, head: bytes) -> Header:
    """From the IHDR chunk, which must come first; its checksum is checked, as a decoder would."""
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise InputError(f"{url}: truncated PNG header")
    if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        raise InputError(f"{url}: damaged PNG header (IHDR checksum does not match)")
    width, height, bits, colour_type = struct.unpack(">IIBB", head[16:26])
    if colour_type not in PNG_COLOURS or bits not in PNG_BIT_DEPTHS:
        raise InputError(f"{url}: damaged PNG header (bit depth {bits}, colour type {colour_type})")
    colour, channels = PNG_COLOURS[colour_type]
    return Header("PNG", width, height, colour, channels, bits)


def _tiff_header(url: str, head: bytes) -> Header:
    """From the first IFD of a classic or Big TIFF; absent tags take the TIFF defaults."""
    order = "<" if head[:2] == b"II" else ">"
    try:
        (magic,) = struct.unpack(order + "H", head[2:4])
        if magic == 42:  # classic: 4-byte offsets, 2-byte entry count, 12-byte entries
            (ifd,) = struct.unpack(order + "I", head[4:8])
            count_code, offset_code, entry_size = "H", "I", 12
        elif magic == 43:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
            (ifd,) = struct.unpack(order + "Q", head[8:16])
            count_code, offset_code, entry_size = "Q", "Q", 20
        else:
            raise InputError(f"{url}: not a TIFF image (magic {magic})")
        count_size = struct.calcsize(count_code)
        (entries,) = struct.unpack(order + count_code, _block(url, head, ifd, count_size))
        if entries > TIFF_MAX_ENTRIES:
            raise InputError(f"{url}: damaged TIFF header ({entries} directory entries)")
        table = _block(url, head, ifd + count_size, entries * entry_size)
    except struct.error:
        raise InputError(f"{url}: truncated TIFF header") from None
    tags: dict[int, int] = {}
    field_size = struct.calcsize(offset_code)  # count and value field; the value is an offset when it does not fit
    for i in range(entries):
        entry = table[i * entry_size : (i + 1) * entry_size]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if kind not in TIFF_INTEGERS or tag in tags:
            continue
        (count,) = struct.unpack(order + offset_code, entry[4 : 4 + field_size])
        code, nbytes = TIFF_INTEGERS[kind]
        value = entry[4 + field_size :]
        if count * nbytes > field_size:  # several values (BitsPerSample of a colour TIFF): the first
            value = _block(url, head, struct.unpack(order + offset_code, value)[0], nbytes)
        (tags[tag],) = struct.unpack(order + code, value[:nbytes])
    if TIFF_WIDTH not in tags or TIFF_LENGTH not in tags:
        raise InputError(f"{url}: TIFF without image width/length")
    photometric = tags.get(TIFF_PHOTOMETRIC, 1)
    return Header("TIFF", tags[TIFF_WIDTH], tags[TIFF_LENGTH],
                  TIFF_PHOTOMETRICS.get(photometric, f"photometric {photometric}"), tags.get(TIFF_SAMPLES, 1),
                  tags.get(TIFF_BITS, 1), TIFF_SAMPLE_FORMATS.get(tags.get(TIFF_SAMPLE_FORMAT, 1), "undefined"),
                  tags.get(TIFF_COMPRESSION, 1))


def _block(url: str, head: bytes, start: int, length: int) -> bytes:
    """``length`` bytes at ``start``: from the already-read head when it holds them."""
    if start + length <= len(head):
        block = head[start : start + length]
    else:
        block = storage.read_range(url, start, start + length)
    if len(block) != length:
        raise InputError(f"{url}: truncated TIFF header")
    return block
