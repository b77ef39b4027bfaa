"""Slice reading: full decode (8/16-bit PNG and TIFF) and header-only sizes and formats, errors naming the URL."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from emprocess.align import images
from emprocess.align.images import image_size, read_header, read_image
from emprocess.stages import InputError


def url_of(path) -> str:
    return f"file://{path}"


@pytest.mark.parametrize("name", ["a.png", "a.tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grayscale_slices_round_trip(tmp_path, name, dtype):
    image = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, (37, 53), dtype=dtype)
    assert cv2.imwrite(str(tmp_path / name), image)
    read = read_image(url_of(tmp_path / name))
    assert read.dtype == dtype and np.array_equal(read, image)
    assert image_size(url_of(tmp_path / name)) == (53, 37)


def test_tiff_whose_directory_follows_the_pixels(tmp_path):
    """libtiff writes the image directory after the pixel data: beyond the first read of the header."""
    image = np.random.default_rng(1).integers(0, 255, (300, 400), dtype=np.uint8)
    path = tmp_path / "late.tif"
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    data = path.read_bytes()
    assert struct.unpack("<I", data[4:8])[0] > images.HEAD_BYTES  # the case under test
    assert image_size(url_of(path)) == (400, 300)


def tiff_header(order: str, big: bool, width: int, length: int) -> bytes:
    """A minimal TIFF (no pixels): header and one directory holding width and length (values are
    left-justified in their field, so a 4-byte LONG in BigTIFF's 8-byte field is padded after it)."""
    mark = b"II" if order == "<" else b"MM"
    if big:
        head = mark + struct.pack(order + "HHHQ", 43, 8, 0, 16)
        entries = struct.pack(order + "HHQQ", 256, 16, 1, width) + struct.pack(order + "HHQI4x", 257, 4, 1, length)
        return head + struct.pack(order + "Q", 2) + entries + struct.pack(order + "Q", 0)
    head = mark + struct.pack(order + "HI", 42, 8)
    entries = struct.pack(order + "HHIHH", 256, 3, 1, width, 0) + struct.pack(order + "HHII", 257, 4, 1, length)
    return head + struct.pack(order + "H", 2) + entries + struct.pack(order + "I", 0)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("big", [False, True])
def test_tiff_headers_in_both_byte_orders_and_bigtiff(tmp_path, order, big):
    path = tmp_path / "h.tif"
    path.write_bytes(tiff_header(order, big, 20_000, 19_999))
    assert image_size(url_of(path)) == (20_000, 19_999)


SAMPLES = {np.dtype(np.uint8): (8, "unsigned"), np.dtype(np.uint16): (16, "unsigned"),
           np.dtype(np.int16): (16, "signed"), np.dtype(np.float32): (32, "float")}


@pytest.mark.parametrize("name", ["a.png", "a.tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_header_agrees_with_the_decoder(tmp_path, name, dtype, channels):
    """What the header says (channels, bits, sample type) is what OpenCV decodes, and the header
    refuses exactly the slices ``read_image`` refuses."""
    shape = (37, 53) if channels == 1 else (37, 53, channels)
    assert cv2.imwrite(str(tmp_path / name), np.zeros(shape, dtype))
    url = url_of(tmp_path / name)
    header, decoded = read_header(url), cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED)
    assert header.size == (53, 37)
    assert header.channels == (1 if decoded.ndim == 2 else decoded.shape[2])
    assert (header.bits, header.sample) == SAMPLES[decoded.dtype]
    try:
        read_image(url)
    except InputError:
        assert header.problem()
    else:
        assert header.problem() is None


def test_colour_is_refused_naming_the_url(tmp_path):
    path = tmp_path / "rgb.png"
    assert cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="rgb.png.*colour"):
        read_image(url_of(path))


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_bytes_are_input_errors_naming_the_url(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match="bad.png"):
        read_image(url_of(path))
    with pytest.raises(InputError, match="bad.png"):
        image_size(url_of(path))


def test_missing_slice_is_file_not_found_naming_the_url(tmp_path):
    url = url_of(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(url)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        image_size(url)


def test_unusable_url_is_an_input_error():
    with pytest.raises(InputError, match="ftp://"):
        read_image("ftp://host/a.png")
    with pytest.raises(InputError, match="ftp://"):
        image_size("ftp://host/a.png")
