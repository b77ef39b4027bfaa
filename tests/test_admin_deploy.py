"""``emprocess admin deploy``: the calls it makes to Cloud Composer, Cloud Build, Artifact Registry,
Cloud Run and Secret Manager, for a fresh project and an existing one.

No cloud here: ``gcloud`` is ``support/fake_gcloud.py`` (it records each call and keeps what the calls
create), and the environment's bucket is a bucket of the GCS emulator, so the uploads are real writes.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from emprocess import storage
from emprocess.admin import deploy_cloudrun, deploy_composer
from emprocess.cli import main
from emprocess.registry import SERVICES

REPO = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).parent / "support" / "fake_gcloud.py"
PROJECT, REGION = "lab-project", "us-central1"


class FakeCloud:
    """The fake gcloud's state and log, read back by the tests."""

    def __init__(self, folder: Path):
        self.state_file, self.log_file = folder / "state.json", folder / "log.jsonl"
        self.state_file.write_text("{}")
        self.log_file.write_text("")

    @property
    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def set_state(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state))

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]

    def changes(self) -> list[list[str]]:
        """The calls that are not reads."""
        reads = ("describe", "access")
        return [c["args"] for c in self.calls() if not any(r in c["args"] for r in reads)]

    def forget_calls(self) -> None:
        self.log_file.write_text("")


@pytest.fixture
def cloud(tmp_path, monkeypatch) -> FakeCloud:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE))} \"$@\"\n")
    gcloud.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    fake = FakeCloud(tmp_path)
    monkeypatch.setenv("FAKE_GCLOUD_STATE", str(fake.state_file))
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(fake.log_file))
    return fake


def deploy_cloudrun_cli(service: str, *extra: str) -> int:
    return main(["admin", "deploy", "cloudrun", service, "--project", PROJECT, "--region", REGION,
                 "--allowed-prefixes", "gs://lab-em,gs://lab-em_*", *extra])


def flag_values(args: list[str], flag: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")] + \
           [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


# --- Cloud Run ------------------------------------------------------------------------------------------


def test_cloudrun_dry_run_on_a_fresh_project_plans_repository_build_and_deploy(cloud, capsys):
    assert deploy_cloudrun_cli("fiji", "--dry-run") == 0
    printed = capsys.readouterr().out.splitlines()
    assert cloud.changes() == [] and cloud.state == {}  # only describes were made
    planned = [shlex.split(line.removeprefix("would "))[1:] for line in printed]
    assert [p[:2] for p in planned] == [["services", "enable"], ["artifacts", "repositories"], ["builds", "submit"],
                                        ["run", "deploy"]]
    assert planned[0][2:5] == list(deploy_cloudrun.APIS)
    image = f"{REGION}-docker.pkg.dev/{PROJECT}/emprocess/fiji:{deploy_cloudrun.image_tag(REPO)}"
    assert flag_values(planned[2], "--substitutions") == [f"_SERVICE=fiji,_IMAGE={image}"]
    assert flag_values(planned[2], "--config") == [str(REPO / "containers/cloudbuild.yaml")]
    deploy = planned[3]
    assert {f: flag_values(deploy, f) for f in ("--image", "--cpu", "--memory", "--concurrency", "--timeout",
                                                "--max-instances")} == {
        "--image": [image], "--cpu": ["2"], "--memory": ["4Gi"], "--concurrency": ["1"], "--timeout": ["900"],
        "--max-instances": ["32"]}
    assert "--no-allow-unauthenticated" in deploy
    assert flag_values(deploy, "--set-env-vars") == [
        "^;^EMPROCESS_ALLOWED_PREFIXES=gs://lab-em,gs://lab-em_*;EMPROCESS_CONCURRENT_REQUESTS=1"]


def test_cloudrun_deploy_builds_once_and_prints_the_url(cloud, capsys):
    assert deploy_cloudrun_cli("emwrite", "--max-instances", "48") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "emwrite: https://emwrite-fake.a.run.app"
    state = cloud.state
    assert list(state["repositories"]) == ["emprocess"] and len(state["images"]) == 1
    service = state["services"]["emwrite"]["spec"]["template"]
    assert service["metadata"]["annotations"]["autoscaling.knative.dev/maxScale"] == "48"
    assert service["spec"]["containers"][0]["env"]["EMPROCESS_ALLOWED_PREFIXES"] == "gs://lab-em,gs://lab-em_*"
    cloud.forget_calls()
    assert deploy_cloudrun_cli("emwrite", "--max-instances", "48") == 0  # the same sources: no new build
    assert [c[:2] for c in cloud.changes()] == [["services", "enable"], ["run", "deploy"]]


def test_cloudrun_refuses_a_bad_prefix_before_any_call(cloud, capsys):
    code = main(["admin", "deploy", "cloudrun", "fiji", "--project", PROJECT, "--region", REGION,
                 "--allowed-prefixes", "gs://lab-em,relative/path", "--dry-run"])
    assert code == 2
    assert "relative/path" in capsys.readouterr().err
    assert cloud.calls() == []


def test_the_image_tag_follows_the_image_sources(tmp_path):
    for top in deploy_cloudrun.IMAGE_SOURCES:
        source = REPO / top
        if source.is_file():
            (tmp_path / top).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / top).write_bytes(source.read_bytes())
        else:
            (tmp_path / top).mkdir()
            (tmp_path / top / "a.py").write_text("x = 1\n")
    tag = deploy_cloudrun.image_tag(tmp_path)
    assert deploy_cloudrun.image_tag(tmp_path) == tag
    (tmp_path / "containers" / "a.py").write_text("x = 2\n")
    assert deploy_cloudrun.image_tag(tmp_path) != tag


# --- Cloud Composer -------------------------------------------------------------------------------------


def deployed_services(cloud: FakeCloud, align_instances: int = 32, write_instances: int = 64) -> None:
    """The two services as ``deploy cloudrun`` leaves them, with their --max-instances."""
    state = cloud.state
    for name, instances in (("fiji", align_instances), ("emwrite", write_instances)):
        state.setdefault("services", {})[name] = {
            "status": {"url": f"https://{name}-abc.a.run.app"},
            "spec": {"template": {"metadata": {"annotations": {
                deploy_cloudrun.MAX_INSTANCES_ANNOTATION: str(instances)}}}}}
    cloud.set_state(state)


def deploy_composer_cli(*extra: str) -> int:
    return main(["admin", "deploy", "composer", "lab-env", "--project", PROJECT, "--location", REGION, *extra])


def planned_calls(printed: str) -> list[list[str]]:
    return [shlex.split(line.removeprefix("would "))[1:] for line in printed.splitlines()
            if line.startswith("would gcloud ")]


def test_composer_plan_for_a_fresh_environment(cloud, capsys):
    deployed_services(cloud)
    before = cloud.state
    assert deploy_composer_cli("--dry-run") == 0
    printed = capsys.readouterr().out
    assert cloud.state == before and cloud.changes() == []
    calls = planned_calls(printed)
    assert calls[0] == ["services", "enable", *deploy_composer.APIS, "--project", PROJECT]
    create = calls[1]
    assert create[:4] == ["composer", "environments", "create", "lab-env"]
    assert flag_values(create, "--image-version") == [deploy_composer.IMAGE_VERSION]
    env = flag_values(create, "--env-variables")[0]
    assert env == ("^;^AIRFLOW_CONN_ALIGN_CLOUD_RUN=https://fiji-abc.a.run.app?auth=google_id_token;"
                   "AIRFLOW_CONN_IMG_WRITE=https://emwrite-abc.a.run.app?auth=google_id_token")
    # (32 + 64) slots / 4 per worker task, and room for the tasks that run in Airflow itself
    assert flag_values(create, "--airflow-configs") == [f"^;^core-parallelism={96 // 4 + 16}"]
    packages = calls[2]
    assert packages[:3] == ["composer", "environments", "update"]
    pins = dict(p.split("=", 1)[1].split("==") for p in packages if p.startswith("--update-pypi-package="))
    assert pins == {name: version[2:] for name, version in deploy_composer.pypi_packages(REPO).items()}
    assert "tensorstore" in pins and not any(name.startswith("apache-airflow") for name in pins)
    uploads = [line for line in printed.splitlines() if line.startswith("would upload ")]
    assert "would upload dags/emprocess_dags.py to <the new environment's bucket>/dags/emprocess_dags.py" in uploads
    assert any(line.endswith("/plugins/emprocess/workflow/dag_factory.py") for line in uploads)
    bindings = [c for c in calls if "add-iam-policy-binding" in c]
    assert sorted(c[3] for c in bindings) == sorted(SERVICES)
    assert all(flag_values(c, "--role") == ["roles/run.invoker"] for c in bindings)
    pools = {c[c.index("--") + 2]: int(c[c.index("--") + 3]) for c in calls if "pools" in c}
    assert pools == {"emprocess_align": 32, "emprocess_write": 64}


def test_composer_deploys_then_changes_only_what_differs(cloud, gcs_server, capsys):
    deployed_services(cloud)
    bucket = gcs_server.new_bucket("composer-env")
    cloud.set_state(dict(cloud.state, new_environment_bucket=bucket))
    assert deploy_composer_cli() == 0
    state = cloud.state
    software = state["environments"]["lab-env"]["config"]["softwareConfig"]
    assert software["pypiPackages"] == deploy_composer.pypi_packages(REPO)
    assert state["pools"] == {"emprocess_align": 32, "emprocess_write": 64}
    assert {b[1] for b in state["bindings"]} == {"serviceAccount:composer@lab-project.iam.gserviceaccount.com"}
    assert storage.read(f"{bucket}/dags/emprocess_dags.py") == (REPO / "dags/emprocess_dags.py").read_bytes()
    assert storage.read(f"{bucket}/plugins/emprocess/cli.py") == (REPO / "emprocess/cli.py").read_bytes()
    capsys.readouterr()

    # An existing environment that is up to date: no create, no update, no upload.
    assert deploy_composer_cli("--dry-run") == 0
    again = planned_calls(capsys.readouterr().out)
    assert [c[:3] for c in again if c[0] == "composer" and c[2] != "run"] == []
    assert "would upload" not in capsys.readouterr().out

    # The write service scaled up: only its connection stays, the pool and parallelism follow.
    deployed_services(cloud, write_instances=128)
    assert deploy_composer_cli("--dry-run") == 0
    calls = planned_calls(capsys.readouterr().out)
    updates = [c for c in calls if c[2] == "update"]
    assert len(updates) == 1 and flag_values(updates[0], "--update-airflow-configs") == [
        f"^;^core-parallelism={(32 + 128) // 4 + 16}"]
    assert ["emprocess_write", "128"] == [c[c.index("--") + 2:c.index("--") + 4] for c in calls if "pools" in c][1]


def test_composer_keeps_the_smtp_password_out_of_arguments_and_output(cloud, monkeypatch, capsys):
    deployed_services(cloud)
    cloud.set_state(dict(cloud.state, new_environment_bucket="gs://unused"))
    monkeypatch.setenv(deploy_composer.SMTP_PASSWORD_ENV, "s3cret/pass")
    smtp = ("--smtp-host", "smtp.lab.org", "--smtp-user", "em@lab.org", "--mail-from", "em@lab.org")
    assert deploy_composer_cli(*smtp, "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "s3cret" not in printed and "secrets create airflow-connections-smtp_default" in printed
    monkeypatch.setattr(deploy_composer, "_upload_steps", lambda *args: [])  # no bucket in this test
    assert deploy_composer_cli(*smtp) == 0
    assert "s3cret" not in capsys.readouterr().out
    secret_calls = [c for c in cloud.calls() if c["args"][0] == "secrets" and "create" in c["args"]]
    assert len(secret_calls) == 1 and not any("s3cret" in a for a in secret_calls[0]["args"])
    assert secret_calls[0]["stdin"] == "smtp://em%40lab.org:s3cret%2Fpass@smtp.lab.org:587?from_email=em@lab.org"
    configs = cloud.state["environments"]["lab-env"]["config"]["softwareConfig"]["airflowConfigOverrides"]
    assert configs["secrets-backend"] == deploy_composer.SECRETS_BACKEND
    cloud.forget_calls()
    assert deploy_composer_cli(*smtp, "--dry-run") == 0  # the same secret: nothing to add
    assert "secrets versions add" not in capsys.readouterr().out


def test_composer_needs_the_services_deployed_first(cloud, capsys):
    assert deploy_composer_cli("--dry-run") == 2
    assert "emprocess admin deploy cloudrun fiji" in capsys.readouterr().err


def test_a_missing_gcloud_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud there
    assert deploy_cloudrun_cli("fiji", "--dry-run") == 2
    assert "gcloud is not on PATH" in capsys.readouterr().err


def test_the_readme_states_the_deploy_settings_as_the_code_has_them():
    text = " ".join((REPO / "README.md").read_text().split())
    run = deploy_cloudrun
    assert f"`--cpu {run.CPU} --memory {run.MEMORY} --concurrency {run.CONCURRENCY} --timeout {run.TIMEOUT_S}`" in text
    assert f"default {run.MAX_INSTANCES['fiji']} for fiji, {run.MAX_INSTANCES['emwrite']} for emwrite" in text
    assert f"+ {deploy_composer.IN_AIRFLOW_TASKS} for the tasks that run in Airflow itself" in text
    assert f"default `{deploy_composer.IMAGE_VERSION}`" in text
    assert f"`{deploy_composer.SMTP_SECRET}`" in text and f"`${deploy_composer.SMTP_PASSWORD_ENV}`" in text
    for provided in deploy_composer.COMPOSER_PROVIDES:
        assert f"`{provided}`" in text
