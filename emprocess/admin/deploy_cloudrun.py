"""``emprocess admin deploy cloudrun fiji|emwrite``: build a service's image with Cloud Build (skipped
when an image of the same sources is already in Artifact Registry), deploy it to Cloud Run with the
settings a call needs, and print its URL."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from emprocess import storage
from emprocess.admin import gcloud
from emprocess.admin.actions import Step, add_safety_flags, carry_out
from emprocess.errors import InputError
from emprocess.registry import SERVICES

# One call at a time per instance, with the CPUs and memory the README's table of peaks asks for; the
# timeout is how long the caller waits for one call.
CPU = "2"
MEMORY = "4Gi"
CONCURRENCY = 1
TIMEOUT_S = 900
MAX_INSTANCES = {"fiji": 32, "emwrite": 64}
REPOSITORY = "emprocess"
BUILD_CONFIG = "containers/cloudbuild.yaml"
LOCK = "requirements/lock.txt"
IMAGE_SOURCES = (LOCK, "pyproject.toml", "README.md", "emprocess", "containers")
MAX_INSTANCES_ANNOTATION = "autoscaling.knative.dev/maxScale"
APIS = ("run.googleapis.com", "cloudbuild.googleapis.com", "artifactregistry.googleapis.com")


@dataclass(frozen=True)
class CloudRunTarget:
    service: str
    project: str
    region: str

    def scope(self) -> list[str]:
        return ["--project", self.project, "--region", self.region]


def repository_root() -> Path:
    """The checkout this package runs from: the build context of the images, and what Composer gets."""
    root = Path(__file__).resolve().parents[2]
    if not (root / LOCK).is_file():
        raise InputError(f"{root}: not a checkout of emprocess ({LOCK} missing); deploy from a checkout")
    return root


def image_tag(root: Path) -> str:
    """A tag that changes exactly when what goes into the image changes (a hash of those files)."""
    digest = hashlib.sha256()
    for top in IMAGE_SOURCES:
        path = root / top
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return "src-" + digest.hexdigest()[:16]


def image_url(target: CloudRunTarget, tag: str) -> str:
    return f"{target.region}-docker.pkg.dev/{target.project}/{REPOSITORY}/{target.service}:{tag}"


def check_prefixes(prefixes: list[str]) -> None:
    if not prefixes:
        raise InputError("--allowed-prefixes: give the locations the service may read and write, e.g. "
                         "gs://B,gs://B_* for source bucket B")
    for prefix in prefixes:
        storage.check_prefix(prefix)  # a StorageError names it


def deploy_steps(target: CloudRunTarget, allowed_prefixes: list[str], max_instances: int, root: Path) -> list[Step]:
    """The calls that bring ``target`` up to date; only ``describe`` calls are made here."""
    check_prefixes(allowed_prefixes)
    steps = [enable_apis(target.project, APIS)]
    repository = ["artifacts", "repositories", "describe", REPOSITORY, "--project", target.project,
                  "--location", target.region]
    if gcloud.describe(repository) is None:
        create = ["artifacts", "repositories", "create", REPOSITORY, "--project", target.project,
                  "--location", target.region, "--repository-format", "docker"]
        steps.append(_call(create))
    image = image_url(target, image_tag(root))
    if len(steps) > 1 or gcloud.describe(["artifacts", "docker", "images", "describe", image]) is None:
        steps.append(_call(["builds", "submit", str(root), "--project", target.project, "--config",
                            str(root / BUILD_CONFIG), "--substitutions",
                            f"_SERVICE={target.service},_IMAGE={image}"]))
    env = {"EMPROCESS_ALLOWED_PREFIXES": ",".join(allowed_prefixes),
           "EMPROCESS_CONCURRENT_REQUESTS": str(CONCURRENCY)}
    steps.append(_call(["run", "deploy", target.service, *target.scope(), "--image", image,
                        "--cpu", CPU, "--memory", MEMORY, "--concurrency", str(CONCURRENCY),
                        "--timeout", str(TIMEOUT_S), "--max-instances", str(max_instances),
                        "--no-allow-unauthenticated", gcloud.dict_flag("--set-env-vars", env)]))
    return steps


def enable_apis(project: str, apis: tuple[str, ...]) -> Step:
    """A fresh project has the APIs a deploy uses turned off; enabling an enabled one does nothing."""
    return _call(["services", "enable", *apis, "--project", project])


def _call(args: list[str]) -> Step:
    return Step(gcloud.shown(args), lambda: gcloud.run(args))


def service_url(target: CloudRunTarget) -> str | None:
    found = gcloud.describe(["run", "services", "describe", target.service, *target.scope()])
    return None if found is None else found["status"]["url"]


def service_max_instances(described: dict) -> int:
    """The ``--max-instances`` a deployed service runs with, from its description."""
    annotations = described["spec"]["template"]["metadata"].get("annotations", {})
    return int(annotations.get(MAX_INSTANCES_ANNOTATION, 100))  # Cloud Run's own default


def cmd_deploy(args) -> int:
    target = CloudRunTarget(args.service, args.project, args.region)
    prefixes = [p.strip() for p in args.allowed_prefixes.split(",") if p.strip()]
    steps = deploy_steps(target, prefixes, args.max_instances or MAX_INSTANCES[args.service], repository_root())
    carry_out(steps, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"{target.service}: {service_url(target)}")
    return 0


def add_parser(deploy_sub) -> None:
    p = deploy_sub.add_parser("cloudrun", help="build a service's image (Cloud Build) and deploy it to Cloud Run")
    p.add_argument("service", choices=sorted(SERVICES))
    p.add_argument("--project", required=True)
    p.add_argument("--region", required=True, help="e.g. us-central1 (also the Artifact Registry location)")
    p.add_argument("--allowed-prefixes", required=True, metavar="URLS",
                   help="comma-separated locations the service may use: gs://B,gs://B_* for source bucket B")
    p.add_argument("--max-instances", type=int, metavar="N",
                   help=f"instances at most (default: {MAX_INSTANCES}); Composer's pools are sized from it")
    add_safety_flags(p, destructive=False)
    p.set_defaults(func=cmd_deploy)
