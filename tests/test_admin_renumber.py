"""``emprocess admin renumber`` and ``emprocess admin run-name``, driven through the CLI as a lab runs them:
a renumbering a run can read (``img%05d``), traceable back to the originals, never overwriting; run ids
that keep 128 random bits in every bucket name derived from them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from emprocess import config, storage
from emprocess.admin import run_name

TOKEN = re.compile(r"[a-z2-7]{26}")  # lowercase base32 of 128 bits, no padding


def emprocess(capsys, *argv: str) -> tuple[int, str, str]:
    """``emprocess ARGV`` in this process: its exit code, stdout and stderr."""
    from emprocess.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def acquisition(folder: Path, names: list[str]) -> Path:
    """A folder of fake images, each holding its own name (so a copy shows where it came from)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())
    return folder


def mapping_of(dst: Path) -> dict:
    return json.loads((dst / "renumber.json").read_text())


# ---- renumber, local folders -------------------------------------------------------------------------


def test_links_in_natural_order_with_a_mapping_back(tmp_path, capsys):
    src = acquisition(tmp_path / "acq", ["s10.png", "s2.png", "s1.png", ".DS_Store"])
    dst = tmp_path / "stack"
    code, out, err = emprocess(capsys, "admin", "renumber", str(src), str(dst))
    assert (code, err) == (0, "")
    assert {p.name: os.readlink(p) for p in dst.glob("img*")} == {
        "img00000.png": str(src / "s1.png"), "img00001.png": str(src / "s2.png"), "img00002.png": str(src / "s10.png")}
    mapping = mapping_of(dst)
    assert mapping["images"] == {"img00000.png": f"file://{src}/s1.png", "img00001.png": f"file://{src}/s2.png",
                                 "img00002.png": f"file://{src}/s10.png"}
    assert mapping["rule"] == {"pattern": "*", "order": "natural", "regex": None, "start": 0,
                               "name_format": "img%05d"}
    assert f"link file://{dst}/img00002.png -> file://{src}/s10.png" in out
    assert "3 images numbered img00000.png .. img00002.png" in out


def test_copies_keep_each_extension(tmp_path, capsys):
    src = acquisition(tmp_path / "acq", ["b2.tif", "b1.png", "notes.txt"])
    dst = tmp_path / "stack"
    code, out, _ = emprocess(capsys, "admin", "renumber", str(src), str(dst), "--pattern", "b*", "--copy")
    assert code == 0
    copies = sorted(p.name for p in dst.iterdir())
    assert copies == ["img00000.png", "img00001.tif", "renumber.json"]
    assert not any(p.is_symlink() for p in dst.iterdir())
    assert (dst / "img00001.tif").read_bytes() == b"b2.tif"
    assert f"copy file://{src}/b1.png to file://{dst}/img00000.png" in out


def test_regex_order_skips_and_counts_what_it_does_not_match(tmp_path, capsys):
    src = acquisition(tmp_path / "acq", ["tile_z0031_c1.tif", "tile_z0007_c1.tif", "overview.tif", "tile_z0012_c1.tif"])
    dst = tmp_path / "stack"
    code, out, _ = emprocess(capsys, "admin", "renumber", str(src), str(dst), "--regex", r"_z(\d+)_",
                             "--start", "5", "--name-format", "slice%03d", "--copy")
    assert code == 0
    mapping = mapping_of(dst)
    assert mapping["images"] == {"slice005.tif": f"file://{src}/tile_z0007_c1.tif",
                                 "slice006.tif": f"file://{src}/tile_z0012_c1.tif",
                                 "slice007.tif": f"file://{src}/tile_z0031_c1.tif"}
    assert mapping["skipped"] == [f"file://{src}/overview.tif"]
    assert mapping["rule"]["order"] == "regex" and mapping["rule"]["regex"] == r"_z(\d+)_"
    assert "3 images numbered slice005.tif .. slice007.tif; 1 skipped (not matching --regex)" in out


def test_two_files_with_one_number_are_refused_naming_both(tmp_path, capsys):
    src = acquisition(tmp_path / "acq", ["s1.png", "s01.png", "s2.png"])
    code, _, err = emprocess(capsys, "admin", "renumber", str(src), str(tmp_path / "stack"), "--regex", r"s(\d+)")
    assert code == 2
    assert "'s01.png' and 's1.png' both have number 1" in err
    assert not (tmp_path / "stack").exists()


@pytest.mark.parametrize("mode", [[], ["--copy"]])
def test_a_rerun_finds_everything_in_place(tmp_path, capsys, mode):
    src = acquisition(tmp_path / "acq", ["s1.png", "s2.png"])
    dst = tmp_path / "stack"
    argv = ["admin", "renumber", str(src), str(dst), *mode]
    assert emprocess(capsys, *argv)[0] == 0
    before = {p.name: (p.is_symlink(), p.read_bytes(), p.lstat().st_mtime_ns) for p in dst.iterdir()}
    code, out, _ = emprocess(capsys, *argv)
    assert code == 0
    assert out.splitlines()[0] == "nothing to do"
    assert {p.name: (p.is_symlink(), p.read_bytes(), p.lstat().st_mtime_ns) for p in dst.iterdir()} == before


def test_a_dry_run_prints_every_call_and_makes_none(tmp_path, capsys):
    src = acquisition(tmp_path / "acq", ["s1.png", "s2.png"])
    dst = tmp_path / "stack"
    code, out, _ = emprocess(capsys, "admin", "renumber", str(src), str(dst), "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        f"would make file://{dst}",
        f"would link file://{dst}/img00000.png -> file://{src}/s1.png",
        f"would link file://{dst}/img00001.png -> file://{src}/s2.png",
        f"would write file://{dst}/renumber.json",
        "2 images numbered img00000.png .. img00001.png (dry run: nothing made)",
    ]
    assert not dst.exists()


def test_a_different_numbering_in_dst_is_refused_naming_the_file(tmp_path, capsys):
    src = acquisition(tmp_path / "acq", ["s1.png", "s2.png", "s3.png"])
    dst = tmp_path / "stack"
    assert emprocess(capsys, "admin", "renumber", str(src), str(dst))[0] == 0
    # fewer images: img00002.png would be left over from the other numbering
    code, _, err = emprocess(capsys, "admin", "renumber", str(src), str(dst), "--pattern", "s[12].png")
    assert code == 2
    assert f"file://{dst}/img00002.png is not part of this numbering" in err
    # the same names from other files
    other = acquisition(tmp_path / "other", ["s1.png", "s2.png", "s3.png"])
    code, _, err = emprocess(capsys, "admin", "renumber", str(other), str(dst))
    assert code == 2
    assert f"file://{dst}/img00000.png already exists and is not a link to file://{other}/s1.png" in err
    # copies where links are
    code, _, err = emprocess(capsys, "admin", "renumber", str(src), str(dst), "--copy")
    assert code == 2
    assert f"file://{dst}/img00000.png already exists and is a link, not a copy; renumbering never overwrites" in err
    assert mapping_of(dst)["images"]["img00002.png"] == f"file://{src}/s3.png"  # nothing overwritten


def test_an_existing_file_that_differs_is_never_overwritten(tmp_path, capsys):
    src = acquisition(tmp_path / "acq", ["s1.png", "s2.png"])
    dst = acquisition(tmp_path / "stack", ["img00000.png"])
    code, _, err = emprocess(capsys, "admin", "renumber", str(src), str(dst), "--copy")
    assert code == 2
    assert f"file://{dst}/img00000.png already exists and differs from file://{src}/s1.png" in err
    assert sorted(p.name for p in dst.iterdir()) == ["img00000.png"]


def test_a_different_mapping_file_is_refused(tmp_path, capsys):
    src = acquisition(tmp_path / "acq", ["s1.png"])
    dst = tmp_path / "stack"
    assert emprocess(capsys, "admin", "renumber", str(src), str(dst), "--copy")[0] == 0
    code, _, err = emprocess(capsys, "admin", "renumber", str(src), str(dst), "--copy", "--pattern", "s*")
    assert code == 2
    assert f"file://{dst}/renumber.json records a different numbering" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--pattern", "*.tif"], "holds 2 files, none matching --pattern '*.tif'"),
    (["--regex", r"z(\d+)"], "none of the 2 files matching --pattern '*' matches --regex"),
    (["--regex", r"s\d+"], "has no group"),
    (["--regex", "s(\\d+"], "is not a regular expression"),
    (["--name-format", "img"], "--name-format 'img' must hold exactly one printf integer field"),
    (["--start", "-1"], "--start must be 0 or more"),
])
def test_unusable_rules_are_refused(tmp_path, capsys, argv, message):
    src = acquisition(tmp_path / "acq", ["s1.png", "s2.png"])
    code, _, err = emprocess(capsys, "admin", "renumber", str(src), str(tmp_path / "stack"), *argv)
    assert code == 2
    assert message in err
    assert not (tmp_path / "stack").exists()


def test_src_equal_to_dst_and_an_empty_src_are_refused_naming_the_location(tmp_path, capsys):
    src = acquisition(tmp_path / "acq", ["s1.png"])
    code, _, err = emprocess(capsys, "admin", "renumber", str(src), f"file://{src}/")
    assert code == 2
    assert f"error: SRC and DST are the same location (file://{src})" in err
    code, _, err = emprocess(capsys, "admin", "renumber", str(tmp_path / "nothing"), str(tmp_path / "stack"))
    assert code == 2
    assert f"error: file://{tmp_path}/nothing holds no files" in err


# ---- renumber, buckets ------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["s3_server", "gcs_server"])
def test_bucket_objects_are_copied_into_a_new_bucket_and_a_rerun_is_a_no_op(request, capsys, server):
    store = request.getfixturevalue(server)
    bucket = store.new_bucket("acq")
    for name in ["s10.png", "s2.png", "s1.png"]:
        storage.write(f"{bucket}/raw/{name}", name.encode())
    name = store.bucket_name("stack")  # not made yet: renumbering makes it
    src, dst = f"{bucket}/raw", f"{store.scheme}://{name}"
    code, out, _ = emprocess(capsys, "admin", "renumber", src, dst)
    assert code == 0 and store.bucket_exists(name)
    assert out.splitlines()[0] == f"make {dst}"
    assert f"copy {src}/s10.png to {dst}/img00002.png" in out
    assert storage.listdir(dst) == ["img00000.png", "img00001.png", "img00002.png", "renumber.json"]
    assert [storage.read(f"{dst}/img0000{z}.png") for z in range(3)] == [b"s1.png", b"s2.png", b"s10.png"]
    assert storage.read_json(f"{dst}/renumber.json")["images"]["img00002.png"] == f"{src}/s10.png"
    code, out, _ = emprocess(capsys, "admin", "renumber", src, dst)
    assert (code, out.splitlines()[0]) == (0, "nothing to do")


# ---- run-name -------------------------------------------------------------------------------------


def test_a_run_name_is_the_name_and_128_random_bits(capsys):
    code, out, err = emprocess(capsys, "admin", "run-name", "lab-em")
    assert (code, err) == (0, "")
    name, token = out.strip().rsplit("-", 1)
    assert name == "lab-em" and TOKEN.fullmatch(token)
    assert len(token) * 5 >= 128  # base32: 5 bits a character
    assert config.run_key(out.strip(), "gs://lab") == out.strip()  # the bucket names hold it whole


def test_run_names_do_not_repeat():
    names = {run_name.run_name("lab") for _ in range(10_000)}
    assert len(names) == 10_000


@pytest.mark.parametrize("name", ["Lab", "lab_1", "lab.1", "lab-", "la--b", "läb", ""])
def test_unusable_names_are_refused(capsys, name):
    code, out, err = emprocess(capsys, "admin", "run-name", name)
    assert (code, out) == (2, "")
    assert f"error: run name {name!r}: use lowercase letters and digits, with single '-' between them" in err


@pytest.mark.parametrize("source", [None, "file:///data/acq", "gs://lab-em-2024", "s3://lab-em-2024"])
def test_a_name_must_leave_the_run_key_whole(capsys, source):
    flags = [] if source is None else ["--source", source]
    room = run_name.key_room(source)
    longest = room - 1 - run_name.TOKEN_LENGTH
    code, out, _ = emprocess(capsys, "admin", "run-name", "a" * longest, *flags)
    assert code == 0
    assert config.run_key(out.strip(), source or "file:///data/acq") == out.strip()
    code, _, err = emprocess(capsys, "admin", "run-name", "a" * (longest + 1), *flags)
    assert code == 2
    assert f"NAME may be at most {longest}" in err


def test_a_source_too_long_for_any_run_name_is_refused(capsys):
    source = "gs://" + "b" * 50  # its run buckets' names are "b" * 50 + "_chunk_" + the run key: 6 left
    code, _, err = emprocess(capsys, "admin", "run-name", "lab", "--source", source)
    assert code == 2
    assert f"error: source {source} leaves 6 characters for a run key" in err
