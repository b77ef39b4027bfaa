"""``emprocess admin deploy composer``: create or update a Cloud Composer 3 environment (Airflow 3) so
it runs emprocess: its PyPI packages, the DAG file, the plugin and the package in the environment's
bucket, the two services' connections, the pools sized from the services' ``--max-instances``, the
Airflow settings, the invoker role on both services, and the SMTP connection in Secret Manager.

For an existing environment only what differs is changed: each kind of change is one update call
(Composer takes one kind per update), and files already in the bucket with the same bytes are left.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from emprocess import storage
from emprocess.admin import gcloud
from emprocess.admin.actions import Step, add_safety_flags, carry_out
from emprocess.admin.deploy_cloudrun import LOCK, CloudRunTarget, enable_apis, repository_root, service_max_instances
from emprocess.errors import InputError
from emprocess.registry import SERVICES
from emprocess.workflow import SMTP_CONNECTION, THREADS_PER_WORKER

APIS = ("composer.googleapis.com", "secretmanager.googleapis.com")
IMAGE_VERSION = "composer-3-airflow-3"  # the latest Airflow 3 build Composer 3 offers
ENVIRONMENT_SIZE = "small"
# Packages the Composer image brings with its Airflow: pinning them again would fight its own pins.
COMPOSER_PROVIDES = ("apache-airflow*", "pydantic", "requests", "google-auth", "google-cloud-storage")
SECRETS_PREFIX = "airflow-connections"  # Airflow's Secret Manager backend reads connection C as PREFIX-C
SMTP_SECRET = f"{SECRETS_PREFIX}-{SMTP_CONNECTION}"
SMTP_PASSWORD_ENV = "EMPROCESS_SMTP_PASSWORD"
SECRETS_BACKEND = "airflow.providers.google.cloud.secrets.secret_manager.CloudSecretManagerBackend"
IN_AIRFLOW_TASKS = 16  # room for the tasks that run in Airflow's workers (gates, collect, report …)
# What goes into the environment's bucket: (source in the checkout, destination under the bucket).
UPLOADS = (("dags/emprocess_dags.py", "dags/emprocess_dags.py"),
           ("plugins/emprocess_plugin.py", "plugins/emprocess_plugin.py"))
PACKAGE_DESTINATION = "plugins/emprocess"  # Composer puts plugins/ on every component's PYTHONPATH


@dataclass(frozen=True)
class Environment:
    name: str
    project: str
    location: str

    def scope(self) -> list[str]:
        return [self.name, "--project", self.project, "--location", self.location]


@dataclass(frozen=True)
class Wanted:
    """What the environment should have, derived from the checkout and the deployed services."""

    image_version: str
    pypi_packages: dict[str, str]  # name -> "==version"
    env_variables: dict[str, str]
    airflow_configs: dict[str, str]
    pools: dict[str, int]
    invoker_services: tuple[str, ...]
    smtp_uri: str | None


def pypi_packages(root: Path) -> dict[str, str]:
    """The package's runtime requirements, pinned at the lock's versions, less Composer's own."""
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    locked = dict(line.split("==", 1) for line in (root / LOCK).read_text().splitlines()
                  if "==" in line and not line.lstrip().startswith("#"))
    locked = {_normal(name): version.split(";")[0].strip() for name, version in locked.items()}
    packages = {}
    for requirement in declared:
        name = _normal(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])
        if not any(fnmatch.fnmatchcase(name, provided) for provided in COMPOSER_PROVIDES):
            packages[name] = f"=={locked[name]}"
    return packages


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def connection_uri(url: str) -> str:
    """An Airflow connection to a Cloud Run service, authenticated with Google ID tokens."""
    return f"{url.rstrip('/')}?auth=google_id_token"


def smtp_uri(host: str, port: int, user: str | None, mail_from: str) -> str:
    """The SMTP connection, its password from the environment (it goes to Secret Manager only)."""
    password = os.environ.get(SMTP_PASSWORD_ENV, "")
    login = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
    return f"smtp://{login}{host}:{port}?from_email={quote(mail_from, safe='@')}"


def wanted(args, root: Path) -> Wanted:
    """The environment's wanted state; reads the deployed services (``describe``), changes nothing."""
    urls, pools = {}, {}
    for service in SERVICES.values():
        found = gcloud.describe(["run", "services", "describe", service.name,
                                 *CloudRunTarget(service.name, args.project, args.location).scope()])
        if found is None:
            raise InputError(f"Cloud Run service {service.name!r} is not deployed in {args.project}/{args.location}: "
                             f"run `emprocess admin deploy cloudrun {service.name}` first")
        urls[service.connection] = found["status"]["url"]
        pools[service.pool] = max(THREADS_PER_WORKER, service_max_instances(found))  # one call per instance
    configs = {"core-parallelism": str(sum(pools.values()) // THREADS_PER_WORKER + IN_AIRFLOW_TASKS)}
    smtp = None
    if args.smtp_host:
        if not args.mail_from:
            raise InputError("--mail-from: the run-ended mail's sender is needed with --smtp-host")
        smtp = smtp_uri(args.smtp_host, args.smtp_port, args.smtp_user, args.mail_from)
        configs["secrets-backend"] = SECRETS_BACKEND
        configs["secrets-backend_kwargs"] = json.dumps({"connections_prefix": SECRETS_PREFIX,
                                                        "project_id": args.project})
    return Wanted(args.image_version, pypi_packages(root),
                  {f"AIRFLOW_CONN_{name}": connection_uri(url) for name, url in urls.items()},
                  configs, pools, tuple(sorted(SERVICES)), smtp)


def deploy_steps(env: Environment, want: Wanted, root: Path) -> list[Step]:
    """The calls that bring ``env`` to ``want``; only ``describe`` calls and reads are made here."""
    steps = [enable_apis(env.project, APIS)]
    described = gcloud.describe(["composer", "environments", "describe", *env.scope()])
    steps += _create_steps(env, want) if described is None else _update_steps(env, want, described)
    bucket = _bucket_of(env, described)
    steps += _upload_steps(root, bucket, described is not None)
    account = _account_of(env, described)
    for service in want.invoker_services:
        steps.append(_call(["run", "services", "add-iam-policy-binding", service, "--project", env.project,
                            "--region", env.location, "--member", "serviceAccount:{account}",
                            "--role", "roles/run.invoker"], account=account))
    for pool, slots in sorted(want.pools.items()):
        steps.append(_call(["composer", "environments", "run", *env.scope(), "pools", "--", "set", pool,
                            str(slots), f"emprocess: {pool}"]))
    if want.smtp_uri is not None:
        steps += _smtp_steps(env, want.smtp_uri)
    return steps


def _create_steps(env: Environment, want: Wanted) -> list[Step]:
    create = ["composer", "environments", "create", *env.scope(), "--image-version", want.image_version,
              "--environment-size", ENVIRONMENT_SIZE, gcloud.dict_flag("--env-variables", want.env_variables),
              gcloud.dict_flag("--airflow-configs", want.airflow_configs)]
    return [_call(create), _packages_step(env, want.pypi_packages)]


def _update_steps(env: Environment, want: Wanted, described: dict) -> list[Step]:
    software = described.get("config", {}).get("softwareConfig", {})
    steps = []
    if not software.get("imageVersion", "").startswith(want.image_version):
        steps.append(_update(env, ["--image-version", want.image_version]))
    packages = _changed(software.get("pypiPackages", {}), want.pypi_packages)
    if packages:
        steps.append(_packages_step(env, packages))
    variables = _changed(software.get("envVariables", {}), want.env_variables)
    if variables:
        steps.append(_update(env, [gcloud.dict_flag("--update-env-variables", variables)]))
    configs = _changed(software.get("airflowConfigOverrides", {}), want.airflow_configs)
    if configs:
        steps.append(_update(env, [gcloud.dict_flag("--update-airflow-configs", configs)]))
    return steps


def _changed(have: dict[str, str], want: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in want.items() if have.get(key) != value}


def _packages_step(env: Environment, packages: dict[str, str]) -> Step:
    return _update(env, [f"--update-pypi-package={name}{version}" for name, version in sorted(packages.items())])


def _update(env: Environment, flags: list[str]) -> Step:
    return _call(["composer", "environments", "update", *env.scope(), *flags])


def _bucket_of(env: Environment, described: dict | None) -> Callable[[], str]:
    """The environment's bucket: known now for an existing environment, after its creation else."""
    if described is not None:
        prefix = described["config"]["dagGcsPrefix"]
        return lambda: prefix.rsplit("/dags", 1)[0]

    def after_creation() -> str:
        return gcloud.describe(["composer", "environments", "describe", *env.scope()])["config"][
            "dagGcsPrefix"].rsplit("/dags", 1)[0]

    return after_creation


def _account_of(env: Environment, described: dict | None) -> Callable[[], str]:
    """The service account the environment's tasks run as (they call the services)."""
    def account() -> str:
        found = described or gcloud.describe(["composer", "environments", "describe", *env.scope()])
        return found["config"]["nodeConfig"]["serviceAccount"]

    return account


def _upload_steps(root: Path, bucket: Callable[[], str], existing: bool) -> list[Step]:
    """One write per file that differs from the bucket's copy (every file, for a new environment)."""
    files = [(root / source, destination) for source, destination in UPLOADS]
    package = root / "emprocess"
    files += [(path, f"{PACKAGE_DESTINATION}/{path.relative_to(package)}")
              for path in sorted(package.rglob("*.py")) if "__pycache__" not in path.parts]
    shown_bucket = bucket() if existing else "<the new environment's bucket>"
    steps = []
    for path, destination in files:
        data = path.read_bytes()
        if existing and storage.read_if_exists(storage.join(shown_bucket, destination)) == data:
            continue
        steps.append(Step(f"upload {path.relative_to(root)} to {shown_bucket}/{destination}",
                          lambda data=data, destination=destination: storage.write(
                              storage.join(bucket(), destination), data)))
    return steps


def _smtp_steps(env: Environment, uri: str) -> list[Step]:
    """The SMTP connection as a secret: its value goes to gcloud on stdin, never in an argument."""
    scope = ["--project", env.project]
    if gcloud.describe(["secrets", "describe", SMTP_SECRET, *scope]) is None:
        args = ["secrets", "create", SMTP_SECRET, *scope, "--replication-policy", "automatic", "--data-file=-"]
    else:
        current = gcloud.run(["secrets", "versions", "access", "latest", "--secret", SMTP_SECRET, *scope])
        if current == uri:
            return []
        args = ["secrets", "versions", "add", SMTP_SECRET, *scope, "--data-file=-"]
    return [Step(f"{gcloud.shown(args)} (the SMTP connection, password from ${SMTP_PASSWORD_ENV}, on stdin)",
                 lambda: gcloud.run(args, stdin=uri))]


def _call(args: list[str], account: Callable[[], str] | None = None) -> Step:
    """A gcloud call; ``{account}`` in an argument is filled when the call is made (a new
    environment's service account is known only after its creation)."""
    if account is None:
        return Step(gcloud.shown(args), lambda: gcloud.run(args))
    return Step(gcloud.shown([a.replace("{account}", "<the environment's service account>") for a in args]),
                lambda: gcloud.run([a.replace("{account}", account()) for a in args]))


def cmd_deploy(args) -> int:
    root = repository_root()
    env = Environment(args.name, args.project, args.location)
    carry_out(deploy_steps(env, wanted(args, root), root), dry_run=args.dry_run)
    if not args.dry_run:
        print(f"environment {env.name} is up to date; trigger a run with: gcloud composer environments run "
              f"{env.name} --project {env.project} --location {env.location} dags trigger -- "
              f"emprocess_width4_v… --conf '<conf JSON>'")
    return 0


def add_parser(deploy_sub) -> None:
    p = deploy_sub.add_parser("composer", help="create or update a Cloud Composer 3 environment (Airflow 3) "
                                               "that runs emprocess")
    p.add_argument("name", help="the environment's name")
    p.add_argument("--project", required=True)
    p.add_argument("--location", required=True, help="region, e.g. us-central1; the services' region too")
    p.add_argument("--image-version", default=IMAGE_VERSION,
                   help=f"Composer image (default {IMAGE_VERSION}: the latest Airflow 3 build)")
    p.add_argument("--smtp-host", help=f"SMTP server for the run-ended mail (password: ${SMTP_PASSWORD_ENV})")
    p.add_argument("--smtp-port", type=int, default=587)
    p.add_argument("--smtp-user")
    p.add_argument("--mail-from", help="the mail's sender address")
    add_safety_flags(p, destructive=False)
    p.set_defaults(func=cmd_deploy)
