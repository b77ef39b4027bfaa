"""Bad-input cases about slices, all found from headers (see ``support.refusals``): colour, depth, sample type,
size, format and damage anywhere in the stack, each offending slice named. Cases on TIFF stacks
switch the template to ``img%03d.tif`` and rewrite the stack as TIFF before spoiling it."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from support.refusals import SIZE, SLICES, Case


def name(z: int, ext: str = "png") -> str:
    return f"img{z:03d}.{ext}"


def write(src: Path, z: int, image: np.ndarray, ext: str = "png") -> None:
    assert cv2.imwrite(str(src / name(z, ext)), image)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(bits: int, colour_type: int, size: int = SIZE) -> bytes:
    """A PNG whose header says ``bits`` and ``colour_type`` (cv2 writes neither palette nor sub-8-bit):
    the checks read headers only, so its pixel data is a stub."""
    header = struct.pack(">IIBBBBB", size, size, bits, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def tiff_bytes(tags: dict[int, int]) -> bytes:
    """A classic little-endian TIFF of one directory of LONG tags (no pixel data)."""
    entries = b"".join(struct.pack("<HHII", tag, 4, 1, value) for tag, value in sorted(tags.items()))
    return b"II" + struct.pack("<HIH", 42, 8, len(tags)) + entries + struct.pack("<I", 0)


def as_tiff(src: Path) -> None:
    for z in range(SLICES):
        write(src, z, cv2.imread(str(src / name(z)), cv2.IMREAD_UNCHANGED), "tif")


def tiff_stack(spoil):
    """A damage that turns the stack into TIFF slices, then spoils it."""
    def damage(src: Path) -> None:
        as_tiff(src)
        spoil(src)
    return damage


def tif_template(conf: dict) -> None:
    conf["image"] = "img%03d.tif"


def gray(dtype=np.uint8, shape=(SIZE, SIZE)) -> np.ndarray:
    return np.full(shape, 40, dtype)


def as_16_bit_but(z_8_bit: int):
    def damage(src: Path) -> None:
        for z in range(SLICES):
            write(src, z, gray(np.uint8 if z == z_8_bit else np.uint16))
    return damage


def thirty_slices_from_5_on_16_bit(src: Path) -> None:
    for z in range(SLICES, 30):
        write(src, z, gray(np.uint8 if z < 5 else np.uint16))


def replace(z: int, content: bytes):
    return lambda src: (src / name(z)).write_bytes(content)


def cut(z: int, length: int, ext: str = "png"):
    def damage(src: Path) -> None:
        path = src / name(z, ext)
        path.write_bytes(path.read_bytes()[:length])
    return damage


def damaged_width(src: Path) -> None:
    data = bytearray((src / name(1)).read_bytes())
    data[18] ^= 0xFF  # a byte of IHDR's width: the chunk's checksum no longer matches
    (src / name(1)).write_bytes(bytes(data))


def directory(src: Path) -> None:
    (src / name(1)).unlink()
    (src / name(1)).mkdir()


def remove(*zs: int):
    return lambda src: [(src / name(z)).unlink() for z in zs]


def every_slice(image: np.ndarray):
    return lambda src: [write(src, z, image) for z in range(SLICES)]


def several(src: Path) -> None:
    write(src, 1, gray(shape=(SIZE, SIZE, 3)))
    write(src, 2, gray(shape=(SIZE - 16, SIZE)))
    write(src, 3, gray(shape=(SIZE, SIZE, 3)))


JPEG = cv2.imencode(".jpg", gray())[1].tobytes()
ZSTD = 50000  # a TIFF compression OpenCV's libtiff does not decode

CASES = [Case(*case) for case in [
    ("colour PNG in the middle", None, lambda src: write(src, 2, gray(shape=(SIZE, SIZE, 3))),
     ("img002.png is RGB colour, not grayscale",)),
    ("RGBA PNG", None, lambda src: write(src, 1, gray(shape=(SIZE, SIZE, 4))), ("img001.png is RGBA colour",)),
    ("grayscale+alpha PNG", None, replace(3, png_bytes(8, 4)), ("img003.png is grayscale+alpha",)),
    ("palette PNG", None, replace(2, png_bytes(8, 3)), ("img002.png is palette colour",)),
    ("1-bit PNG", None, replace(1, png_bytes(1, 0)), ("img001.png has 1-bit unsigned samples",)),
    ("16-bit slice among 8-bit", None, lambda src: write(src, 2, gray(np.uint16)),
     ("1 slice is 16-bit but img000.png is 8-bit: img002.png",)),
    ("8-bit slice among 16-bit", None, as_16_bit_but(1), ("1 slice is 8-bit but img000.png is 16-bit: img001.png",)),
    ("float32 TIFF", tif_template, tiff_stack(lambda src: write(src, 2, gray(np.float32), "tif")),
     ("img002.tif has 32-bit float samples",)),
    ("signed 16-bit TIFF", tif_template, tiff_stack(lambda src: write(src, 1, gray(np.int16), "tif")),
     ("img001.tif has 16-bit signed samples",)),
    ("colour TIFF", tif_template, tiff_stack(lambda src: write(src, 3, gray(shape=(SIZE, SIZE, 3)), "tif")),
     ("img003.tif is RGB colour",)),
    ("TIFF compression OpenCV cannot decode", tif_template,
     tiff_stack(lambda src: (src / name(1, "tif")).write_bytes(tiff_bytes({256: SIZE, 257: SIZE, 258: 8, 259: ZSTD}))),
     (f"img001.tif uses TIFF compression {ZSTD}",)),
    ("different size in the middle", None, lambda src: write(src, 2, gray(shape=(SIZE - 16, SIZE))),
     (f"1 slice is {SIZE}x{SIZE - 16} px but img000.png is {SIZE}x{SIZE} px: img002.png",)),
    ("25 of 30 slices 16-bit", lambda c: c.update(maxz=29), thirty_slices_from_5_on_16_bit,
     ("25 slices are 16-bit but img000.png is 8-bit: img005.png, img006.png", "img024.png and 5 more")),
    ("several kinds of bad slices", None, several,
     ("img001.png is RGB colour, not grayscale; likewise 1 slice: img003.png",
      f"1 slice is {SIZE}x{SIZE - 16} px but img000.png is {SIZE}x{SIZE} px: img002.png")),
    ("empty slice file", None, replace(1, b""), ("img001.png is unreadable: empty file",)),
    ("truncated PNG header", None, cut(2, 20), ("img002.png is unreadable: truncated PNG header",)),
    ("damaged PNG header", None, damaged_width, ("img001.png is unreadable: damaged PNG header",)),
    ("JPEG named .png", None, replace(2, JPEG), ("img002.png is unreadable: not a PNG or TIFF image (it is a JPEG)",)),
    ("directory where a slice should be", None, directory, ("img001.png does not exist or is not a file",)),
    ("zero-byte TIFF", tif_template, tiff_stack(cut(3, 0, "tif")), ("img003.tif is unreadable: empty file",)),
    ("truncated TIFF header", tif_template, tiff_stack(cut(0, 10, "tif")),
     ("img000.tif is unreadable: truncated TIFF header",)),
    ("slices missing in the middle", None, remove(1, 2),
     ("img001.png does not exist or is not a file; likewise 1 slice: img002.png",)),
    ("many slices missing", lambda c: c.update(maxz=40), None,
     ("img004.png does not exist or is not a file; likewise 36 slices: img005.png", "img023.png and 17 more")),
    ("1x1 slices", None, every_slice(gray(shape=(1, 1))), ("slices are 1x1 px (img000.png and all others)",)),
]]
