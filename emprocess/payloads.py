"""What a mini-task's payload is made of.

Each stage's payload is a pydantic model built from these types, strict (no coercion) and closed (no
unknown keys), so a malformed payload is an InputError naming each bad field (``Stage.parse_payload``),
whether the work runs behind a service, in-process or in a test; the services publish the models as
their request schemas. Every size is bounded before anything is read or allocated.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from emprocess import storage
from emprocess.redact import redact

# Far above any EM volume (a 10⁶-pixel axis, 2³¹ slices), far below what would overflow the arithmetic.
MAX_AXIS = 1 << 20
MAX_INDEX = (1 << 31) - 1
MAX_URLS = 1024  # URLs in one list of a payload (a batch of slices, a sample)
MAX_TEXT = 1 << 16


def _location(value: str) -> str:
    """The location normalised as storage uses it, and under this process's allowed prefixes."""
    return str(storage.allowed(value))


LOCATION_FORMAT = "location"  # the JSON-schema format of a location in the services' OpenAPI
Location = Annotated[str, Field(max_length=4096, json_schema_extra={"format": LOCATION_FORMAT}),
                     AfterValidator(_location)]
"""A storage location in a payload (see ``storage.parse``). In a service, one outside its allowed
prefixes raises ``storage.OutsideAllowedPrefixes`` (403) while the payload is validated."""
Axis = Annotated[int, Field(ge=1, le=MAX_AXIS)]
Index = Annotated[int, Field(ge=0, le=MAX_INDEX)]
Coords = Annotated[list[Annotated[int, Field(ge=0, le=MAX_AXIS)]], Field(min_length=3, max_length=3)]


class Payload(BaseModel):
    """Base of every mini-task payload: no unknown keys, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Layout(Payload):
    """A volume's geometry: ``size`` and ``voxel_offset`` (x, y, z) in voxels, ``resolution`` in nm."""

    size: Annotated[list[Axis], Field(min_length=3, max_length=3)]
    voxel_offset: Annotated[list[Annotated[int, Field(ge=-MAX_INDEX, le=MAX_INDEX)]],
                            Field(min_length=3, max_length=3)]
    resolution: Annotated[list[Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)]],
                          Field(min_length=3, max_length=3)]


def describe(err: ValidationError) -> str:
    return describe_errors(err.errors(include_url=False, include_input=False, include_context=False))


def describe_errors(errors: list[dict]) -> str:
    """Validation errors as one clause per field, without the offending values (they may hold secrets)."""
    problems = []
    for e in errors:
        where = ".".join(str(p) for p in e["loc"] if p != "body") or "payload"
        problems.append(f"'{where}': {e['msg'].removeprefix('Value error, ')}")
    return redact("invalid payload: " + "; ".join(problems))
