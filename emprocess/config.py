"""The run conf: one model, the single source of its schema (Airflow Params are generated from it).

Keys follow the original clio_ingest conf (ARCHITECTURE §2). Unknown keys are errors so that typos
never pass silently; every message names the offending key.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from emprocess import run_layout, storage
from emprocess.errors import ConfError  # noqa: F401  (re-exported: the conf's own error)

STAGES = ("align", "pyramid", "chunkedgraph", "meshing", "skeletons")
FORMATS = ("precomputed", "ome-zarr")  # of the aligned volume
RUN_KEY_MAX = 40  # longer run ids are cut and end in a digest
DIGEST_LENGTH = 8
EMAIL_PATTERN = r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$"  # one address
# Bounds of the numeric keys, for EM data. Integer keys are strict: 1e30 or 4.0 is refused, not rounded.
MAX_Z = 9_999_999  # 10^7 slices: far beyond the largest EM stacks (tens of thousands of sections)
RESOLUTION_NM = (0.1, 100_000.0)  # from atomic-scale pixels to 100 µm sections
CHUNK_SIDES = (16, 4096)  # ChunkedGraph chunk side, voxels: smaller chunks make more bookkeeping than work;
# a 4096² × 64 chunk is 8 GiB of ids
MAX_DOWNSAMPLE = 64
MIN_ALIGN_SIDE = 64  # px a side a slice keeps once downsampled for alignment: fewer hold too few SIFT features


class MeshConf(BaseModel):
    model_config = ConfigDict(extra="forbid")

    simplification_factor: Annotated[float, Field(gt=1, le=100)] = Field(
        4.0, description="each level of detail keeps about 1/factor of the triangles of the level below; "
                         "more than 1, at most 100")


class SegmentationConf(BaseModel):
    """A supervoxel volume to build a ChunkedGraph (and meshes) from."""

    model_config = ConfigDict(extra="forbid")

    watershed: str = Field(
        description="URL of a precomputed uint32/uint64 supervoxel volume in the run's aligned frame")
    agglomeration: str | None = Field(None, description="URL of a supervoxel → body table (.npy, .npz or .csv)")
    chunk_size: list[StrictInt] = Field(
        [256, 256, 256], min_length=3, max_length=3,
        description=f"ChunkedGraph chunk [x, y, z] in voxels: powers of two from {CHUNK_SIDES[0]} to {CHUNK_SIDES[1]}",
        json_schema_extra={"items": {"type": "integer", "minimum": CHUNK_SIDES[0], "maximum": CHUNK_SIDES[1]}})
    test: bool = Field(False, description="build only one layer-3 chunk's 8 children and their parents")
    mesh: MeshConf = MeshConf()

    @field_validator("watershed", "agglomeration")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else str(storage.parse(value))

    @field_validator("chunk_size")
    @classmethod
    def _power_of_two(cls, value: list[int]) -> list[int]:
        low, high = CHUNK_SIDES
        for size in value:
            if not low <= size <= high or size & (size - 1):
                raise ValueError(f"each chunk_size entry must be a positive power of two, at least {low} and at most "
                                 f"{high}, got {size}")
        return value


class RunConf(BaseModel):
    """One DAG run's conf."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(description="dataset name: letters, digits, '.', '_' or '-'; at most 128 characters",
                    min_length=1, max_length=128)
    image: str = Field(description="printf template of slice names under source, e.g. img%05d.png")
    minz: int = Field(ge=0, le=MAX_Z, strict=True, description=f"first slice (inclusive), 0 to {MAX_Z}")
    maxz: int = Field(ge=0, le=MAX_Z, strict=True, description=f"last slice (inclusive), 0 to {MAX_Z}")
    source: str = Field(description="gs://bucket, s3://bucket, file:///abs/dir or a bare bucket name (= gs://)")
    project: str | None = Field(None, description="GCP project for created buckets (GCS only)")
    email: str | None = Field(None, pattern=EMAIL_PATTERN,
                              description="address to mail when the run ends, succeeded or failed")
    downsample_factor: int = Field(
        1, ge=1, le=MAX_DOWNSAMPLE, strict=True,
        description=f"downsample before alignment only, 1 to {MAX_DOWNSAMPLE}; the slices must keep "
                    f"{MIN_ALIGN_SIDE} px a side")
    resolution: float | list[float] = Field(
        8.0, description=f"voxel size in nm, a number or [x, y, z], each {RESOLUTION_NM[0]} to {RESOLUTION_NM[1]:g}",
        json_schema_extra={"anyOf": [
            {"type": "number", "minimum": RESOLUTION_NM[0], "maximum": RESOLUTION_NM[1]},
            {"type": "array", "minItems": 3, "maxItems": 3,
             "items": {"type": "number", "minimum": RESOLUTION_NM[0], "maximum": RESOLUTION_NM[1]}}]})
    createRawPyramid: bool = Field(True, alias="createRawPyramid", description="also write the lossless raw volume")
    skip_align: bool = Field(False, description="use identity transforms")
    align_mode: Literal["affine", "elastic"] = Field(
        "affine", description="affine: one model per pair of slices; elastic: also a smooth per-slice "
                              "deformation (patch flow to z+1 and z+2, spring-mesh relaxation)")
    bad_slices: Literal["replace", "keep"] | list[Annotated[int, Field(ge=0, le=MAX_Z, strict=True)]] = Field(
        "replace", description="replace: slices found blank, saturated, out of focus or unregistrable are "
                               "skipped by the alignment and copied from their nearest good neighbour; keep: "
                               "none are; a list of z: exactly those are")
    missing_slices: Literal["fail", "replace"] = Field(
        "fail", description="fail: a missing slice file refuses the run; replace: it is copied from its "
                            "nearest present neighbour")
    clip_limit: float = Field(0.02, alias="clip-limit", ge=0, le=1, description="CLAHE clip limit, 0 to 1; 0 disables")
    reuse_alignment: str | None = Field(None, description="run id whose transforms to reuse")
    jpeg_quality: int = Field(90, ge=1, le=100, strict=True,
                              description="JPEG quality of the viewing pyramid, 1 to 100")
    public: bool = Field(False, description="make the viewing location public + CORS")
    stages: list[Literal[STAGES]] = Field(list(STAGES), description=f"subset of {', '.join(STAGES)} to run")
    formats: list[Literal[FORMATS]] = Field(
        ["precomputed"], description="formats of the aligned volume: precomputed (always written: the viewer link "
                                     "and the later stages read it) and, when listed too, ome-zarr (OME-Zarr 0.5 "
                                     "beside it in the viewing location)")
    segmentation: SegmentationConf | None = None

    @model_validator(mode="before")
    @classmethod
    def _raw_pyramid_alias(cls, data: Any) -> Any:
        """Accept the original key ``rawPyramid`` as well as ``createRawPyramid``."""
        if isinstance(data, dict) and "rawPyramid" in data:
            data = dict(data)
            if "createRawPyramid" in data:
                raise ValueError("give only one of 'rawPyramid' and 'createRawPyramid'")
            data["createRawPyramid"] = data.pop("rawPyramid")
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' or '-'")
        return value

    @field_validator("image")
    @classmethod
    def _template(cls, value: str) -> str:
        if len(re.findall(r"%0?\d*d", value)) != 1 or value.count("%") != 1:
            raise ValueError("must contain exactly one printf integer field such as %05d")
        if value.startswith("/") or any(part in ("..", ".") for part in value.split("/")):
            raise ValueError("must be a relative name under source without '..'")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        url = storage.parse(value)
        if url.scheme != "file" and url.path:
            raise ValueError("a bucket source must be a bucket name without a path")
        return str(url)

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) != 3:
            raise ValueError("give one number or [x, y, z]")
        low, high = RESOLUTION_NM
        if not all(low <= v <= high for v in values):
            raise ValueError(f"each value must be {low} to {high:g} nm")
        return value

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one stage")
        if "meshing" in value and "chunkedgraph" not in value:
            raise ValueError("meshing needs chunkedgraph in the same run: it meshes that graph's bodies")
        if "skeletons" in value and "chunkedgraph" not in value:
            raise ValueError("skeletons needs chunkedgraph in the same run: it skeletonizes that graph's bodies")
        return sorted(set(value), key=STAGES.index)

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        if "precomputed" not in value:
            raise ValueError('list "precomputed": it is always written (the viewer link and the later stages read '
                             'it); "ome-zarr" can only be added to it')
        return sorted(set(value), key=FORMATS.index)

    @model_validator(mode="after")
    def _ranges(self) -> "RunConf":
        if self.minz > self.maxz:
            raise ValueError(f"minz ({self.minz}) must not exceed maxz ({self.maxz})")
        if self.skip_align and self.reuse_alignment:
            raise ValueError("give only one of 'skip_align' and 'reuse_alignment'")
        if isinstance(self.bad_slices, list):
            outside = [z for z in self.bad_slices if z not in self.z_range]
            if outside:
                raise ValueError(f"'bad_slices' names slices outside minz..maxz ({self.minz}..{self.maxz}): {outside[:10]}")
        return self

    @property
    def resolution_xyz(self) -> list[float]:
        r = self.resolution
        return [float(v) for v in r] if isinstance(r, list) else [float(r)] * 3

    @property
    def z_range(self) -> range:
        return range(self.minz, self.maxz + 1)

    def slice_url(self, z: int) -> str:
        return storage.join(self.source, self.image % z)

    def reused_process(self) -> str | None:
        """The process location of the run named by ``reuse_alignment``, where its transforms are."""
        if self.reuse_alignment is None:
            return None
        return run_layout.run_locations(self.source, run_key(self.reuse_alignment, self.source)).process

    def to_json(self) -> dict:
        """The conf as given keys (aliases), with defaults filled in."""
        return self.model_dump(mode="json", by_alias=True)


def parse_conf(data: Any) -> RunConf:
    """Validate a conf dict; raise ConfError naming every offending key."""
    if not isinstance(data, dict):
        raise ConfError(f"the run conf must be a JSON object, got {type(data).__name__}")
    try:
        return RunConf.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "conf"
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key (check its spelling)"
            elif e["type"] == "missing":
                msg = "required key is missing"
            problems.append(f"'{key}': {msg}")
        raise ConfError("invalid run conf: " + "; ".join(problems), problems) from None
    except storage.StorageError as err:
        raise ConfError(f"invalid run conf: {err}") from None


def conf_json_schema() -> dict:
    """JSON schema of the conf with aliases (as users write it)."""
    return RunConf.model_json_schema(by_alias=True)


def run_key(run_id: str, source: str) -> str:
    """A bucket-safe key from an Airflow run id: lowercase, [a-z0-9-], stable, and short enough that
    the run's buckets named after ``source`` (``B_chunk_<key>``) stay within the 63 characters GCS and
    S3 allow. A run id cut to fit ends in a digest of the whole, so keys stay distinct."""
    import hashlib

    cleaned = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    if not cleaned:
        raise ConfError(f"run id {run_id!r} has no usable characters")
    room = run_layout.run_key_room(source)
    limit = RUN_KEY_MAX if room is None else min(RUN_KEY_MAX, room)
    if limit < DIGEST_LENGTH:
        bucket = storage.parse(source).bucket
        raise ConfError(f"'source': bucket name {bucket!r} is {len(bucket)} characters; the run's buckets are "
                        f"named after it and need it to be at most {len(bucket) - DIGEST_LENGTH + limit}")
    if len(cleaned) > limit:
        digest = hashlib.sha1(run_id.encode()).hexdigest()[:DIGEST_LENGTH]
        head = cleaned[: max(0, limit - DIGEST_LENGTH - 1)].rstrip("-")
        cleaned = f"{head}-{digest}" if head else digest
    return cleaned
