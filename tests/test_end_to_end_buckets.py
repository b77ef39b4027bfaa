"""``emprocess run`` end to end with the stack and every output in buckets, as labs run it at scale:
the real S3 API (moto server) and GCS API (gcp-storage-emulator), real Airflow, both real services."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import tensorstore as ts
from support.chunkedgraph import active_components, body_table, read_labels, same_partition, voronoi_supervoxels
from support.chunkedgraph import write_volume as write_watershed
from support.emprocess_cli import emprocess, run_id_of

from emprocess import storage
from emprocess.lifecycle import TMP_LIFETIME_DAYS
from emprocess.meshing.layout import mesh_url, read_sharding
from emprocess.pyramid import stages as pyramid
from emprocess.pyramid.writers import open_scale, open_zarr, zyx
from emprocess.stages import RunContext

SERVERS = {"s3": "s3_server", "gs": "gcs_server"}


def run_conf(conf: dict, scheme: str, tmp_path) -> str:
    """Write ``conf`` (with the project GCS wants for created buckets) and return its path."""
    if scheme == "gs":
        conf = dict(conf, project="emprocess-test")
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(conf))
    return str(path)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict:
    from emprocess.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("buckets") / "sample", size=256, n_slices=4, seed=5)


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_stack_in_a_bucket_gives_a_complete_public_pyramid_in_buckets(request, scheme, sample, tmp_path):
    server = request.getfixturevalue(SERVERS[scheme])
    source = f"{scheme}://{server.bucket_name('stack')}"
    upload = [sys.executable, str(Path(__file__).parents[1] / "scripts" / "upload_stack.py"),
              storage.parse(sample["source"]).path, source, "--pattern", "img*.png", "--project", "emprocess-test"]
    uploaded = subprocess.run(upload, capture_output=True, text=True)
    assert uploaded.returncode == 0, uploaded.stderr
    assert storage.listdir(source) == [sample["image"] % z for z in range(sample["minz"], sample["maxz"] + 1)]
    conf = dict(sample, id=f"bucket-{scheme}", source=source, public=True)

    done = emprocess("run", run_conf(conf, scheme, tmp_path))
    assert done.returncode == 0, done.stderr[-5000:]

    ctx = RunContext.create(conf, run_id_of(done.stdout))
    complete = storage.read_json(storage.join(ctx.locations.process, "complete.json"))
    assert complete["outputs"]["jpeg"] == ctx.locations.jpeg
    state = json.loads(unquote(complete["neuroglancer"].split("#!", 1)[1]))
    assert [layer["source"] for layer in state["layers"]] == [f"precomputed://{ctx.locations.jpeg}"]
    assert f"neuroglancer: {complete['neuroglancer']}" in done.stdout
    for location in (ctx.locations.process, ctx.locations.ng, ctx.locations.chunk, ctx.locations.tmp):
        assert storage.parse(location).scheme == scheme
        assert server.bucket_exists(storage.parse(location).bucket)

    layout = pyramid.run_layout(ctx)
    aligned = open_zarr(ctx.locations.aligned, zyx(layout.size), None, create=False).read().result()
    assert aligned.std() > 10
    raw = [open_scale(ctx.locations.raw, layout, s, "raw", None).read().result().transpose(2, 1, 0)
           for s in range(layout.num_scales)]
    assert np.array_equal(raw[0], aligned)
    assert raw[-1].shape == zyx(layout.scale_size(layout.num_scales - 1))
    assert max(raw[-1].shape) <= 64  # complete: the top scale is a single chunk
    jpeg = open_scale(ctx.locations.jpeg, layout, 0, "jpeg", conf.get("jpeg_quality", 90)).read().result()
    assert np.abs(jpeg.transpose(2, 1, 0).astype(int) - aligned).mean() < 3

    # publish: CORS on the viewing bucket (public: true), expiry on the tmp bucket
    viewing, tmp = storage.parse(ctx.locations.ng).bucket, storage.parse(ctx.locations.tmp).bucket
    if scheme == "s3":
        import boto3

        s3 = boto3.client("s3")
        assert s3.get_bucket_cors(Bucket=viewing)["CORSRules"][0]["AllowedOrigins"] == ["*"]
        assert s3.get_bucket_policy_status(Bucket=viewing)["PolicyStatus"]["IsPublic"]
        blocks = s3.get_public_access_block(Bucket=viewing)["PublicAccessBlockConfiguration"]
        assert not blocks["BlockPublicPolicy"] and not blocks["RestrictPublicBuckets"]
        rules = s3.get_bucket_lifecycle_configuration(Bucket=tmp)["Rules"]
        assert [rule["Expiration"]["Days"] for rule in rules] == [TMP_LIFETIME_DAYS]
    else:
        from google.cloud import storage as gcs

        client = gcs.Client(project="emprocess-test")
        assert client.get_bucket(viewing).cors[0]["origin"] == ["*"]
        rules = list(client.get_bucket(tmp).lifecycle_rules)
        assert [rule["condition"]["age"] for rule in rules] == [TMP_LIFETIME_DAYS]


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_chunkedgraph_run_reads_its_supervoxels_from_a_bucket_and_writes_the_graph_to_buckets(
        request, scheme, tmp_path):
    source = request.getfixturevalue(SERVERS[scheme]).new_bucket("graph")
    watershed = voronoi_supervoxels((40, 36, 12), count=150, seed=11)
    table = body_table(watershed, seed=4)
    table_bytes = io.BytesIO()
    np.save(table_bytes, table)
    storage.write(storage.join(source, "bodies.npy"), table_bytes.getvalue())
    segmentation = {"watershed": write_watershed(storage.join(source, "watershed"), watershed),
                    "agglomeration": storage.join(source, "bodies.npy"), "chunk_size": [16, 16, 16]}
    conf = {"id": f"graph-{scheme}", "image": "img%03d.png", "minz": 0, "maxz": 11, "source": source,
            "stages": ["chunkedgraph", "meshing"], "segmentation": segmentation}

    done = emprocess("run", run_conf(conf, scheme, tmp_path))
    assert done.returncode == 0, done.stderr[-5000:]

    ctx = RunContext.create(conf, run_id_of(done.stdout))
    assert storage.parse(ctx.locations.chunkedgraph).scheme == scheme
    roots = read_labels(ctx.locations.segmentation)
    assert same_partition(roots, active_components(watershed, table))
    mesh = mesh_url(ctx.locations.segmentation)  # a multi-resolution mesh for every body, in the bucket
    assert storage.read_json(storage.join(mesh, "info"))["@type"] == "neuroglancer_multilod_draco"
    shards = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded", "metadata": read_sharding(mesh).to_json(),
                              "base": storage.kvstore_spec(mesh)}, context=storage.context()).result()
    manifests = [shards.read(struct.pack(">Q", int(root))).result() for root in np.unique(roots) if root]
    assert all(manifest.state == "value" and len(manifest.value) > 0 for manifest in manifests)
