"""What a stage worker's pod asks the cluster for.

A pod runs ``threads`` mini-tasks at once, so it needs that many CPUs and, per mini-task, the peak
memory the README's measured table gives for one call of the stage (at the sizes it names), plus
the process's own base. Requests equal limits: a worker neither starves its node's neighbours nor
is killed for memory it was promised. A deployment overrides any of it per stage or group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from emprocess.kubernetes.settings import KubernetesSettings

THREADS = 2
BASE_GIB = 0.5  # Python, numpy, tensorstore and the plan of a share
PEAK_GIB = {  # one mini-task's peak memory (README, "What one call holds in memory"); by stage prefix
    "align.pairs": 2.0,  # a pair of 20k x 20k slices
    "align.bridge": 2.0,  # the same: one pair
    "align.collect": 0.5,
    "align.intensity": 0.5,
    "align.warp": 1.7,  # one 20k x 20k 16-bit slice
    "pyramid.meta": 0.25,
    "pyramid.shard": 1.5,  # one 1024^3 block, JPEG and raw
    "pyramid.top": 1.5,  # 32k x 32k x 4k
    "cg.meta": 0.6,
    "cg.layer2": 0.45,
    "cg.layer": 0.15,
    "cg.flatten": 0.45,
    "mesh.meta": 0.25,
    "mesh.layer2": 0.5,
    "mesh.layer": 0.3,
    "mesh.shards": 1.0,  # one shard, ~4.8 times its bytes: 0.97 GB for 2,048 bodies of ~100 kB (200 MB)
    "skel.meta": 0.25,
    "skel.chunks": 0.5,  # one 256^3 chunk: 0.49 GB for 600 bodies (kimimaro, its distance transform)
    "skel.merge": 0.25,  # one shard: 0.17 GB for 2,400 bodies in 8 chunks' pieces each
}


@dataclass(frozen=True)
class PodResources:
    threads: int
    requests: dict[str, str]
    limits: dict[str, str]
    gpu: bool

    def manifest(self) -> dict:
        return {"requests": dict(self.requests), "limits": dict(self.limits)}


def peak_gib(stage: str) -> float:
    """The table's entry with the longest prefix of ``stage`` (``cg.layer7`` -> ``cg.layer``)."""
    prefixes = [prefix for prefix in PEAK_GIB if stage.startswith(prefix)]
    if not prefixes:
        raise KeyError(f"no measured memory for stage {stage!r}")
    return PEAK_GIB[max(prefixes, key=len)]


def gibibytes(value: float) -> str:
    """Memory as a quantity, rounded up to 256 MiB."""
    return f"{math.ceil(value * 4) * 256}Mi"


def _applies(key: str, stage: str) -> bool:
    return stage == key or stage.startswith(key + ".")


def pod_resources(stage: str, settings: KubernetesSettings) -> PodResources:
    """The stage's defaults, then the settings' overrides of its group, then of the stage itself."""
    override = {}
    for key in sorted((k for k in settings.resources if _applies(k, stage)), key=len):
        override.update(settings.resources[key].model_dump(exclude_none=True))
    threads = override.get("threads", THREADS)
    cpu = override.get("cpu", str(threads))
    memory = override.get("memory", gibibytes(BASE_GIB + threads * peak_gib(stage)))
    requests = {"cpu": cpu, "memory": memory}
    limits = {"cpu": override.get("cpu_limit", cpu), "memory": override.get("memory_limit", memory)}
    gpu = settings.gpu is not None and any(_applies(key, stage) for key in settings.gpu.stages)
    if gpu:  # extended resources are asked for as a limit; the request follows it
        limits[settings.gpu.resource] = str(settings.gpu.count)
    return PodResources(threads, requests, limits, gpu)


def markdown() -> str:
    """The default resources of each stage's pod, as a Markdown table (the README shows it)."""
    defaults = KubernetesSettings()
    rows = ["| stage | mini-tasks at once | CPU | memory |", "|---|---|---|---|"]
    for prefix in PEAK_GIB:
        res = pod_resources(prefix, defaults)
        name = f"`{prefix}N` (N > 2)" if prefix.endswith("layer") else f"`{prefix}`"
        rows.append(f"| {name} | {res.threads} | {res.requests['cpu']} | {res.requests['memory']} |")
    return "\n".join(rows) + "\n"
