"""The meshes' shard files: the format against two third-party readers (tensorstore's sharded
kvstore and CloudVolume), and the meshing stages run with many small shards against the same run
with one shard (the graph is built once and copied, then meshed both ways)."""

from __future__ import annotations

import hashlib
import shutil
import struct
from collections import Counter

import numpy as np
import pytest
import tensorstore as ts
from cloudvolume import CloudVolume
from cloudvolume.datasource.precomputed import mmh3
from support.chunkedgraph import graph_of_bodies, make_context, read_labels, run_stage

from emprocess import sharding, storage
from emprocess.errors import InputError
from emprocess.meshing.layout import mesh_url, read_sharding
from emprocess.meshing.stages import STAGES
from emprocess.sharding import ShardingSpec

SHAPE, OFFSET, RESOLUTION, CHUNK = (90, 70, 40), (3, 5, 7), (8, 8, 10), (32, 32, 16)
SHARDS = next(stage for stage in STAGES if stage.name == "mesh.shards")


def test_the_hash_is_murmurhash3_x86_128_as_readers_compute_it():
    keys = np.random.default_rng(0).integers(0, 2**64 - 1, 500, dtype=np.uint64, endpoint=True)
    keys[:3] = 0, 1, 2**64 - 1
    expected = [mmh3.hash64(np.uint64(k).tobytes(), x64arch=False)[0] % 2**64 for k in keys]
    assert sharding.murmurhash3_x86_128_low64(keys).tolist() == expected


@pytest.mark.parametrize("count", [0, 1, 31, 33, 2048, 2049, 13_758, 1_000_000])
def test_shards_and_minishards_are_the_fewest_that_keep_under_their_capacity(count):
    spec = ShardingSpec.for_keys(count)
    minishards = 1 << spec.minishard_bits
    assert spec.shards * sharding.KEYS_PER_SHARD >= count
    assert spec.shards == 1 or spec.shards // 2 * sharding.KEYS_PER_SHARD < count
    assert spec.shards * minishards * sharding.KEYS_PER_MINISHARD >= count
    assert minishards == 1 or spec.shards * minishards // 2 * sharding.KEYS_PER_MINISHARD < count


def test_tensorstore_reads_each_key_from_where_its_entry_is_indexed(tmp_path):
    """Each entry is stored whole and indexed from its start on (meshes: fragments, then manifest)."""
    rng = np.random.default_rng(1)
    spec = ShardingSpec(minishard_bits=2, shard_bits=2)
    keys = rng.choice(2**40, 300, replace=False).astype(np.uint64)
    entries = {int(k): (rng.bytes(int(rng.integers(0, 50))), rng.bytes(int(rng.integers(1, 50)))) for k in keys}
    shard_of_key = spec.locate(keys)[0]
    for shard in range(spec.shards):
        chosen = [int(k) for k in keys[shard_of_key == shard]]
        data = spec.shard_file([(k, entries[k][0] + entries[k][1], len(entries[k][0])) for k in chosen])
        (tmp_path / spec.shard_name(shard)).write_bytes(data)
    store = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded", "metadata": spec.to_json(),
                             "base": f"file://{tmp_path}/"}).result()
    for key, (_, indexed) in entries.items():
        assert store.read(struct.pack(">Q", key)).result().value == indexed
    assert store.read(struct.pack(">Q", 2**41)).result().state == "missing"


@pytest.fixture(scope="module")
def meshed_both_ways(tmp_path_factory):
    """(one-shard run, many-shard run): the same graph meshed with the default sharding, and with at
    most 16 bodies per shard and 4 per minishard."""
    one = tmp_path_factory.mktemp("one_shard")
    one_ctx, _ = graph_of_bodies(one, SHAPE, 60, 1, CHUNK, ("chunkedgraph", "meshing"), RESOLUTION, OFFSET)
    segmentation = one_ctx.conf.segmentation.model_dump(mode="json", by_alias=True)
    many = tmp_path_factory.mktemp("many_shards")
    shutil.copytree(one, many, dirs_exist_ok=True)
    many_ctx = make_context(many, segmentation, depth=SHAPE[2], stages=("chunkedgraph", "meshing"))
    for stage in STAGES:
        run_stage(one_ctx, stage)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sharding, "KEYS_PER_SHARD", 16)
        patch.setattr(sharding, "KEYS_PER_MINISHARD", 4)
        many_results = {stage.name: run_stage(many_ctx, stage) for stage in STAGES}
    return one_ctx, many_ctx, many_results


def cloudvolume(ctx) -> CloudVolume:
    return CloudVolume("precomputed://" + ctx.locations.segmentation, progress=False)


def test_many_shards_hold_the_same_meshes_at_every_level_of_detail(meshed_both_ways):
    one_ctx, many_ctx, results = meshed_both_ways
    one, many = cloudvolume(one_ctx), cloudvolume(many_ctx)
    assert many.mesh.meta.info["sharding"]["shard_bits"] >= 2 and many.mesh.meta.info["sharding"]["minishard_bits"]
    assert read_sharding(mesh_url(one_ctx.locations.segmentation)).shards == 1
    roots = [int(r) for r in np.unique(read_labels(many_ctx.locations.segmentation)) if r]
    assert len(roots) == results["mesh.meta"]["meta"]["bodies"] > 40
    levels = 0
    for root in roots:
        lods = many.mesh.get_manifest(root).num_lods
        assert lods == one.mesh.get_manifest(root).num_lods
        for lod in range(lods):
            a, b = one.mesh.get(root, lod=lod)[root], many.mesh.get(root, lod=lod)[root]
            assert len(b.faces) and np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
            levels += 1
    assert levels > len(roots)


def test_each_shard_is_written_by_one_mesh_shards_job(meshed_both_ways):
    _, ctx, results = meshed_both_ways
    mesh = mesh_url(ctx.locations.segmentation)
    spec = read_sharding(mesh)
    assert Counter(task["payload"]["shard"] for task in SHARDS.plan(ctx)) == Counter(range(spec.shards))
    written = results["mesh.shards"].values()
    assert sorted(r["written"] for r in written) == sorted(storage.join(mesh, spec.shard_name(s))
                                                           for s in range(spec.shards))
    assert sum(r["bodies"] for r in written) == results["mesh.meta"]["meta"]["bodies"]


def test_the_mesh_folder_holds_its_info_and_one_file_per_shard(meshed_both_ways):
    _, ctx, _ = meshed_both_ways
    mesh = mesh_url(ctx.locations.segmentation)
    spec = read_sharding(mesh)
    assert spec.shards > 1
    assert storage.listdir(mesh) == sorted(["info", *(spec.shard_name(s) for s in range(spec.shards))])


def test_rerunning_the_shard_jobs_rewrites_identical_shards(meshed_both_ways):
    _, ctx, _ = meshed_both_ways
    mesh = mesh_url(ctx.locations.segmentation)

    def digests() -> dict[str, str]:
        return {name: hashlib.sha256(storage.read(storage.join(mesh, name))).hexdigest()
                for name in storage.listdir(mesh)}

    before = digests()
    for task in SHARDS.plan(ctx):
        SHARDS.execute(task["payload"])
    assert digests() == before


@pytest.mark.parametrize("info", [{"@type": "neuroglancer_multilod_draco"}, {"sharding": {"shard_bits": "3"}},
                                  {"sharding": dict(ShardingSpec(2, 3).to_json(), shard_bits=99)}, [1, 2]])
def test_an_info_emprocess_did_not_write_is_bad_input_naming_it(tmp_path, info):
    url = f"file://{tmp_path}/info"
    storage.write_json(url, info)
    with pytest.raises(InputError, match=f"{url}: sharding"):
        ShardingSpec.read(url)
