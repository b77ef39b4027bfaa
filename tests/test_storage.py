"""storage.py against the real APIs it is used with: a local folder, S3 (moto server) and GCS (emulator)."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorstore as ts

from emprocess import run_layout, storage
from emprocess.config import ConfError, run_key
from emprocess.pyramid.chunks import ShardWriter
from emprocess.pyramid.layout import PyramidLayout
from emprocess.pyramid.meta import write_info
from emprocess.pyramid.writers import open_scale
from emprocess.run_layout import RunLocations
from emprocess.storage import StorageError, Url

BACKENDS = ["file", "s3", "gs"]


def _server(request, scheme: str):
    return request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[scheme])


@pytest.fixture(params=BACKENDS)
def base(request, tmp_path) -> str:
    """An empty location on each backend: a folder, or a fresh bucket."""
    if request.param == "file":
        return f"file://{tmp_path}/store"
    return _server(request, request.param).new_bucket()


def fill(base: str, keys: list[str]) -> None:
    for key in keys:
        storage.write(storage.join(base, key), key.encode())


# --- objects ---------------------------------------------------------------------------------------------------


def test_write_read_exists(base):
    key = storage.join(base, "run", "a.bin")
    missing = storage.join(base, "run", "missing.bin")
    storage.write(key, b"\x00payload\xff")
    assert storage.read(key) == b"\x00payload\xff"
    assert storage.exists(key) and not storage.exists(missing)
    assert storage.read_range(key, 1, 4) == b"pay"
    assert storage.read_range(key, 7) == b"d\xff"
    assert storage.read_range(key, -2) == b"d\xff"
    storage.write(key, b"replaced")
    assert storage.read(key) == b"replaced"
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read(missing)
    assert storage.read_if_exists(missing) is None
    assert storage.read_if_exists(key) == b"replaced"


def test_listdir_is_recursive_relative_and_exact(base):
    fill(base, ["run/a", "run/sub/b", "run/sub/c/d", "ru", "run0", "runx/e", "other/f"])
    assert storage.listdir(storage.join(base, "run")) == ["a", "sub/b", "sub/c/d"]
    assert storage.listdir(storage.join(base, "run", "sub")) == ["b", "c/d"]
    assert storage.listdir(storage.join(base, "nothing")) == []
    assert storage.listdir(base) == ["other/f", "ru", "run/a", "run/sub/b", "run/sub/c/d", "run0", "runx/e"]


def test_delete_removes_exactly_one_object(base):
    fill(base, ["run/a", "run/ab", "run/b"])
    storage.delete(storage.join(base, "run", "a"))
    assert storage.listdir(storage.join(base, "run")) == ["ab", "b"]
    storage.delete(storage.join(base, "run", "never-written"))  # deleting nothing is fine
    assert storage.listdir(storage.join(base, "run")) == ["ab", "b"]


def test_delete_tree_stays_inside_its_prefix(base):
    fill(base, ["run/a", "run/sub/b", "ru", "run0", "runx/e"])
    storage.delete_tree(storage.join(base, "run"))
    assert storage.listdir(base) == ["ru", "run0", "runx/e"]


def test_delete_tree_of_a_location_root_empties_it(base):
    fill(base, ["a", "b/c"])
    storage.delete_tree(base)
    assert storage.listdir(base) == []


def test_json_round_trip(base):
    value = {"id": "sample", "z": [0, 1, 2], "nested": {"µm": 0.008, "ok": True, "none": None}}
    url = storage.join(base, "process", "init.json")
    storage.write_json(url, value)
    assert storage.read_json(url) == value
    assert storage.read(url).decode().startswith('{\n  "id"')  # readable: indented, sorted keys


# --- locations ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_ensure_location_creates_a_bucket_once(request, scheme):
    server = _server(request, scheme)
    name = server.bucket_name("made")
    assert not server.bucket_exists(name)
    storage.ensure_location(f"{scheme}://{name}/some/path")
    assert server.bucket_exists(name)
    storage.ensure_location(f"{scheme}://{name}")  # already there: no error
    storage.write(f"{scheme}://{name}/x", b"1")
    assert storage.read(f"{scheme}://{name}/x") == b"1"


def test_ensure_location_creates_s3_buckets_outside_us_east_1(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # needs a LocationConstraint there
    name = s3_server.bucket_name("europe")
    storage.ensure_location(f"s3://{name}")
    assert s3_server.bucket_exists(name)


def published_settings(scheme: str, bucket: str) -> tuple[list[int], int]:
    """(the expiry days of the bucket's lifecycle rules, how many grants of public read it has), as
    the bucket's own API reports them."""
    if scheme == "s3":
        import boto3

        s3 = boto3.client("s3")
        days = [rule["Expiration"]["Days"] for rule in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]]
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        return days, sum(statement["Principal"] == "*" for statement in policy["Statement"])
    from google.cloud import storage as gcs

    found = gcs.Client(project="emprocess-test").get_bucket(bucket)
    days = [rule["condition"]["age"] for rule in found.lifecycle_rules]
    policy = found.get_iam_policy(requested_policy_version=3)
    return days, sum("allUsers" in binding["members"] for binding in policy.bindings)


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_expiry_and_public_read_are_set_once_however_often_a_run_publishes(request, scheme):
    url = _server(request, scheme).new_bucket("published")
    for _ in range(3):  # a resumed run publishes again
        storage.set_expiry(url, 7)
        storage.make_public(url)
    assert published_settings(scheme, storage.parse(url).bucket) == ([7], 1)


def test_ensure_location_creates_folders(tmp_path):
    folder = tmp_path / "a" / "b"
    storage.ensure_location(f"file://{folder}")
    storage.ensure_location(str(folder))
    assert folder.is_dir()


@pytest.mark.parametrize("scheme", BACKENDS)
def test_run_locations_are_usable(request, tmp_path, scheme):
    source = f"file://{tmp_path}/em" if scheme == "file" else _server(request, scheme).new_bucket("src")
    locations = run_layout.run_locations(source, "run-1")
    for location in locations.all():
        storage.ensure_location(location)
        storage.write_json(storage.join(location, "probe.json"), {"at": location})
    for location in locations.all():
        assert storage.read_json(storage.join(location, "probe.json")) == {"at": location}
    assert storage.listdir(locations.process) == ["probe.json"]


# --- volumes through tensorstore -------------------------------------------------------------------------------


def test_zarr3_volume_round_trip(base):
    url = storage.join(base, "tmp", "aligned")
    expected = np.random.default_rng(1).integers(0, 65535, (20, 30, 40), dtype=np.uint16)
    spec = {"driver": "zarr3", "kvstore": storage.kvstore_spec(url)}
    volume = ts.open(spec, create=True, dtype=ts.uint16, shape=expected.shape,
                     chunk_layout=ts.ChunkLayout(chunk_shape=[8, 16, 16]), context=storage.context()).result()
    volume.write(expected).result()
    # A fresh context: nothing cached, so the reads and the partial-chunk read-modify-write hit the store.
    reopened = ts.open(spec, context=ts.Context()).result()
    assert np.array_equal(reopened.read().result(), expected)
    reopened[3:5, 2:7, 1:9].write(7).result()
    expected[3:5, 2:7, 1:9] = 7
    assert np.array_equal(ts.open(spec, context=ts.Context()).result().read().result(), expected)
    assert "zarr.json" in storage.listdir(url)
    assert len(storage.listdir(url)) == 1 + 3 * 2 * 3  # metadata + one object per chunk


def test_sharded_pyramid_scale_round_trip(base):
    """The pyramid's shard files (tensorstore's sharded kvstore over each backend) read back through
    the precomputed driver, as neuroglancer and CloudVolume read them."""
    layout = PyramidLayout((130, 70, 67), (0, 0, 3), (8, 8, 8))
    url = storage.join(base, "neuroglancer", "raw")
    write_info(url, layout, "raw", None)
    expected = np.random.default_rng(2).integers(0, 255, (67, 70, 130), dtype=np.uint8)
    with ThreadPoolExecutor(2) as pool:
        writer = ShardWriter(url, layout, "raw", None, pool)
        writer.write(0, (0, 0, 0), expected)
        writer.commit()
    shards = [path for path in storage.listdir(url) if path.endswith(".shard")]
    assert shards == layout.block_shard_paths((0, 0, 0))[:1]
    read = open_scale(url, layout, 0, "raw").read().result()
    assert np.array_equal(read.transpose(2, 1, 0), expected)


# --- parsing --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://host/x", "unsupported scheme"),
    ("http://host/x", "unsupported scheme"),
    ("gs://bucket-a/a/../b", "'..'"),
    ("s3://bucket-a/./b", "'.'"),
    ("file:///data/../etc", "'..'"),
    ("/data/a/../b", "'..'"),
    ("file://relative/dir", "absolute"),
    ("file://./dir", "absolute"),
    ("gs://UPPER", "not a valid bucket"),
    ("gs://ab", "not a valid bucket"),
    ("s3://-leading", "not a valid bucket"),
    ("s3://trailing-", "not a valid bucket"),
    ("gs://a..b", "not a valid bucket"),
    ("gs:///no-bucket", "not a valid bucket"),
    ("gs://" + "x" * 64, "not a valid bucket"),
    ("", "non-empty"),
    ("   ", "non-empty"),
])
def test_parse_rejects(url, message):
    with pytest.raises(StorageError, match=message):
        storage.parse(url)


def test_parse_rejects_non_strings_and_bad_joins():
    with pytest.raises(StorageError):
        storage.parse(None)
    with pytest.raises(StorageError, match="'..'"):
        storage.join("gs://bucket-a/run", "x/../y")


def test_parse_accepts():
    assert storage.parse("gs://bucket-a/run/x/") == Url("gs", "bucket-a", "run/x")
    assert storage.parse("S3://bucket.a_b-1/k") == Url("s3", "bucket.a_b-1", "k")
    assert storage.parse("file:///data/em/") == Url("file", "", "/data/em")
    assert storage.parse("file://localhost/data") == Url("file", "", "/data")
    assert str(storage.parse("gs://bucket-a")) == "gs://bucket-a"
    assert str(storage.parse("gs://bucket-a/run")) == "gs://bucket-a/run"
    assert str(storage.parse("file:///data/em")) == "file:///data/em"


def test_plain_paths_are_files_and_bare_names_are_gcs_buckets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.parse("/data/em") == Url("file", "", "/data/em")
    assert storage.parse("//data//em/") == Url("file", "", "/data/em")  # as the OS reads it
    for relative in ("./em", "em/x", "~/em", "file:em", "file:/data/em"):  # never the working folder's
        with pytest.raises(StorageError, match="not an absolute location"):
            storage.parse(relative)
    assert storage.parse("my-bucket") == Url("gs", "my-bucket", "")
    assert str(storage.parse("  my-bucket ")) == "gs://my-bucket"


def test_url_helpers():
    u = storage.parse("gs://bucket-a/run/x.json")
    assert u.name == "x.json"
    assert str(u.parent()) == "gs://bucket-a/run"
    assert str(u.parent().parent()) == "gs://bucket-a"
    assert str(storage.parse("file:///data").parent()) == "file:///"
    assert storage.join("gs://bucket-a", "a/", "/b", "", "c") == "gs://bucket-a/a/b/c"
    assert storage.join("file:///d", "x") == "file:///d/x"


def test_kvstore_spec(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert storage.kvstore_spec("file:///d/v") == {"driver": "file", "path": "/d/v/"}
    assert storage.kvstore_spec("gs://bucket-a/v") == {"driver": "gcs", "bucket": "bucket-a", "path": "v/"}
    assert storage.kvstore_spec("gs://bucket-a") == {"driver": "gcs", "bucket": "bucket-a", "path": ""}
    assert storage.kvstore_spec("s3://bucket-a/v") == {"driver": "s3", "bucket": "bucket-a", "path": "v/"}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert storage.kvstore_spec("s3://bucket-a")["endpoint"] == "http://127.0.0.1:9"
    assert storage.kvstore_spec("s3://bucket-a")["aws_region"] == "us-east-1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert storage.kvstore_spec("s3://bucket-a")["endpoint"] == "http://127.0.0.1:10"
    assert storage.kvstore_spec("s3://bucket-a")["aws_region"] == "eu-west-1"


def test_is_under():
    assert storage.is_under("gs://bucket-a/run/x", ["gs://bucket-a/run"])
    assert storage.is_under("gs://bucket-a/run", ["gs://bucket-a/run/"])
    assert storage.is_under("gs://bucket-a/x", ["bucket-a"])  # a bare name is a GCS bucket
    assert not storage.is_under("gs://bucket-a/runner", ["gs://bucket-a/run"])
    assert not storage.is_under("s3://bucket-a/run/x", ["gs://bucket-a/run"])
    assert not storage.is_under("gs://bucket-ab/x", ["gs://bucket-a"])
    assert storage.is_under("/data/a/b", ["file:///other", "file:///data/a"])
    assert not storage.is_under("/data/ab", ["file:///data/a"])
    assert not storage.is_under("gs://bucket-a/x", [])


def test_a_wildcard_prefix_covers_the_buckets_whose_names_start_with_it():
    assert storage.is_under("gs://em-data_ng_run-7/neuroglancer/jpeg/info", ["gs://em-data_*"])
    assert storage.is_under("s3://em-data-tmp-run-7", ["gs://other", "s3://em-data-*"])
    assert not storage.is_under("gs://em-data/x", ["gs://em-data_*"])  # the source bucket needs its own prefix
    assert not storage.is_under("s3://em-data_ng_r/x", ["gs://em-data_*"])
    assert not storage.is_under("gs://em-other_ng_r", ["gs://em-data_*"])


@pytest.mark.parametrize("prefix", ["s3://", "gs://*", "file:///data*", "gs://Upper*", "s3://em/x*", "ftp://a*"])
def test_unusable_prefixes_are_refused_by_name(prefix):
    with pytest.raises(StorageError, match=re.escape(repr(prefix))):
        storage.check_prefix(prefix)
    with pytest.raises(StorageError, match=re.escape(repr(prefix))):
        storage.is_under("gs://em-data/x", [prefix])


@pytest.mark.parametrize("source", ["gs://em-data", "s3://em-data", "file:///d/em"])
def test_run_prefixes_cover_the_source_and_every_run_location_and_nothing_else(source):
    prefixes = run_layout.run_prefixes(source)
    for prefix in prefixes:
        storage.check_prefix(prefix)
    for key in ("run-1", "manual-2026-12-01t09-08-04"):
        locations = run_layout.run_locations(source, key)
        for url in [source, *locations.all(), locations.jpeg, locations.aligned]:
            assert storage.is_under(storage.join(url, "x"), prefixes), url
    neighbour = source.replace("em-data", "em-database").replace("/d/em", "/elsewhere/em")
    assert not storage.is_under(neighbour, prefixes)


@pytest.mark.parametrize(("scheme", "s"), [("gs", "_"), ("s3", "-")])
def test_run_locations_in_buckets(scheme, s):
    locations = run_layout.run_locations(f"{scheme}://em-data", "run-1")
    assert locations == RunLocations(
        process=f"{scheme}://em-data{s}process/run-1",
        ng=f"{scheme}://em-data{s}ng{s}run-1",
        chunk=f"{scheme}://em-data{s}chunk{s}run-1",
        tmp=f"{scheme}://em-data{s}tmp{s}run-1",
    )
    assert locations.jpeg == f"{scheme}://em-data{s}ng{s}run-1/neuroglancer/jpeg"
    assert locations.raw == f"{scheme}://em-data{s}chunk{s}run-1/neuroglancer/raw"
    assert locations.aligned == f"{scheme}://em-data{s}tmp{s}run-1/aligned"
    assert locations.chunkedgraph == f"{scheme}://em-data{s}chunk{s}run-1/chunkedgraph"
    assert locations.meshes == f"{scheme}://em-data{s}ng{s}run-1/neuroglancer/segmentation/mesh"
    assert locations.all() == [locations.process, locations.ng, locations.chunk, locations.tmp]


def test_s3_run_buckets_have_names_aws_accepts():
    """AWS bucket names: 3-63 characters of a-z, 0-9, '.' and '-' (no '_'), starting and ending with a
    letter or digit."""
    key = run_key("manual__2026-12-01T09:08:41.130665+00:00", "s3://em-data")
    for location in run_layout.run_locations("s3://em-data", key).all():
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", storage.parse(location).bucket), location


RUN_IDS = ["manual__2026-12-01T09:08:41.130665+00:00", "manual__2026-12-01T09:08:41.130666+00:00"]


@pytest.mark.parametrize("source", ["gs://janelia-flyem-fibsem-raw-stacks-2026", "s3://mylab-em-stacks-eu-west-1-2026"])
def test_run_keys_fit_the_buckets_named_after_a_long_source(source):
    keys = {run_key(run_id, source) for run_id in RUN_IDS}
    assert len(keys) == len(RUN_IDS)  # cut to fit, still distinct
    for key in keys:
        for location in run_layout.run_locations(source, key).all():
            assert len(storage.parse(location).bucket) <= 63  # parse also refuses an invalid name


def test_run_keys_of_short_sources_keep_the_whole_run_id():
    whole = "manual-2026-12-01t09-08-41-130665-00-00"
    assert run_key(RUN_IDS[0], "gs://em-data") == run_key(RUN_IDS[0], "s3://em-data") == whole
    assert run_key(RUN_IDS[0], "file:///data/" + "a-long-folder-name" * 4) == whole


def test_a_source_bucket_too_long_for_its_run_buckets_is_refused_naming_source():
    with pytest.raises(ConfError, match="'source': bucket name 'a{50}' is 50 characters.*at most 48"):
        run_key(RUN_IDS[0], "gs://" + "a" * 50)


def test_run_locations_of_a_bare_name_and_a_folder():
    assert run_layout.run_locations("em-data", "r") == run_layout.run_locations("gs://em-data", "r")
    locations = run_layout.run_locations("file:///d/em", "r")
    assert locations == RunLocations(process="file:///d/em_process/r", ng="file:///d/em_ng_r",
                                     chunk="file:///d/em_chunk_r", tmp="file:///d/em_tmp_r")


def test_run_locations_need_a_bare_bucket():
    with pytest.raises(StorageError, match="without a path"):
        run_layout.run_locations("gs://em-data/sub", "r")


def test_a_confined_process_reaches_nothing_outside_its_prefixes(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"x")
    (inside / "link").symlink_to(outside, target_is_directory=True)
    storage.confine([f"file://{inside}"])
    try:
        storage.write(f"file://{inside}/ok.txt", b"fine")
        assert storage.read(f"{inside}/ok.txt") == b"fine"
        for url in (f"file://{outside}/secret.txt", f"{outside}/secret.txt", f"file://{inside}/link/secret.txt",
                    f"file://localhost{outside}/secret.txt", "gs://other-bucket/x"):
            for use in (storage.read, storage.exists, storage.listdir, storage.kvstore_spec, storage.delete_tree,
                        lambda u: storage.write(u, b"y"), storage.ensure_location):
                with pytest.raises(storage.OutsideAllowedPrefixes, match="outside this service's allowed prefixes"):
                    use(url)
    finally:
        storage.confine(None)
    assert (outside / "secret.txt").read_bytes() == b"x" and sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert storage.read(f"file://{outside}/secret.txt") == b"x"  # lifted


def test_a_volume_key_cannot_lead_a_confined_process_outside(tmp_path):
    """tensorstore follows '..' in a precomputed volume's scale key: the opener must check it."""
    from emprocess.chunkedgraph import volumes

    inside, outside = tmp_path / "in", tmp_path / "out"
    (inside / "ws").mkdir(parents=True)
    outside.mkdir()
    info = {"@type": "neuroglancer_multiscale_volume", "data_type": "uint64", "num_channels": 1,
            "type": "segmentation", "scales": [{"key": "../../out/evil", "size": [8, 8, 8], "resolution": [1, 1, 1],
                                                "voxel_offset": [0, 0, 0], "chunk_sizes": [[8, 8, 8]],
                                                "encoding": "raw"}]}
    (inside / "ws" / "info").write_text(json.dumps(info))
    storage.confine([f"file://{inside}"])
    try:
        with pytest.raises(storage.StorageError, match="'..' path segments"):
            volumes.open_scale(f"file://{inside}/ws")
    finally:
        storage.confine(None)
    assert not list(outside.iterdir())


@pytest.mark.parametrize("kind", ["a file where a folder must be", "a JSON file that is not JSON"])
def test_what_retrying_cannot_mend_is_a_storage_error_naming_the_location(tmp_path, kind):
    (tmp_path / "file").write_bytes(b"not a folder, not JSON")
    if kind.startswith("a file"):
        with pytest.raises(StorageError, match=re.escape(f"file://{tmp_path}/file/x")):
            storage.write(f"file://{tmp_path}/file/x", b"y")
    else:
        with pytest.raises(StorageError, match=re.escape(f"file://{tmp_path}/file: not a JSON document")):
            storage.read_json(f"file://{tmp_path}/file")
    assert storage.is_permanent(ValueError("FAILED_PRECONDITION: x")) and not storage.is_permanent(
        ValueError("UNAVAILABLE: try again"))
