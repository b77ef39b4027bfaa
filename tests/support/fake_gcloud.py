"""A stand-in for the Google Cloud CLI (no cloud here): the deploy tests put it first on PATH as
``gcloud``. It records every call (arguments and stdin) and keeps the resources the calls make in a
JSON state file, so a ``describe`` after a ``create`` finds what was created, as on a real project.

Only the calls the deploy commands make are known; any other call fails, so a command that starts
making a call nobody has looked at fails its test. It does not check flags the way gcloud does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

KINDS = {("composer", "environments"): "environments", ("run", "services"): "services",
         ("artifacts", "repositories"): "repositories", ("artifacts", "docker", "images"): "images",
         ("secrets",): "secrets"}


def dict_value(flag_value: str) -> dict[str, str]:
    """gcloud's ``^;^K=V;K=V`` dict syntax (or plain ``K=V,K=V``)."""
    separator = ","
    if flag_value.startswith("^"):
        separator, flag_value = flag_value[1:].split("^", 1)
    return dict(item.split("=", 1) for item in flag_value.split(separator) if item)


def flags(args: list[str]) -> dict[str, list[str]]:
    """Every ``--flag value`` and ``--flag=value`` in ``args``, by flag."""
    found: dict[str, list[str]] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        if "=" in arg:
            name, value = arg.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            name, value = arg, args[i + 1]
        else:
            name, value = arg, ""
        found.setdefault(name, []).append(value)
    return found


def main(args: list[str]) -> int:
    state_file = Path(os.environ["FAKE_GCLOUD_STATE"])
    state = json.loads(state_file.read_text())
    stdin = "" if sys.stdin.isatty() else sys.stdin.read()
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
        log.write(json.dumps({"args": args, "stdin": stdin}) + "\n")
    answer = respond(args, flags(args), state, stdin)
    state_file.write_text(json.dumps(state, indent=1))
    if answer is None:
        sys.stderr.write(f"ERROR: (gcloud) NOT_FOUND: {args}\n")
        return 1
    if answer is False:
        sys.stderr.write(f"ERROR: fake gcloud does not know this call: {args}\n")
        return 2
    sys.stdout.write(answer if isinstance(answer, str) else json.dumps(answer))
    return 0


def respond(args: list[str], given: dict[str, list[str]], state: dict, stdin: str):
    """The call's output (str or JSON), None for NOT_FOUND, False for an unknown call."""
    verb_at = next((i for i, a in enumerate(args) if a in ("describe", "create", "update", "run", "deploy",
                                                            "submit", "add-iam-policy-binding", "access", "add",
                                                            "enable")
                    and i > 0), None)
    if verb_at is None:
        return False
    group, verb, rest = tuple(args[:verb_at]), args[verb_at], args[verb_at + 1:]
    name = rest[0] if rest else ""
    kind = KINDS.get(group)
    if verb == "describe" and kind:
        return state.get(kind, {}).get(name)
    if group == ("secrets", "versions") and verb == "access":
        secret = state.get("secrets", {}).get(given["--secret"][0])
        return None if secret is None else secret["latest"]
    if group == ("secrets",) and verb == "create" or group == ("secrets", "versions") and verb == "add":
        state.setdefault("secrets", {})[name] = {"latest": stdin}
        return ""
    if group == ("services",) and verb == "enable":
        state.setdefault("apis", []).extend(api for api in rest if api.endswith(".googleapis.com"))
        return ""
    if group == ("artifacts", "repositories") and verb == "create":
        state.setdefault("repositories", {})[name] = {"format": given["--repository-format"][0]}
        return ""
    if group == ("builds",) and verb == "submit":
        state.setdefault("images", {})[dict_value(given["--substitutions"][0])["_IMAGE"]] = {"built": True}
        return ""
    if group == ("run",) and verb == "deploy":
        state.setdefault("services", {})[name] = {
            "status": {"url": f"https://{name}-fake.a.run.app"},
            "spec": {"template": {"metadata": {"annotations": {
                "autoscaling.knative.dev/maxScale": given["--max-instances"][0]}},
                "spec": {"containers": [{"image": given["--image"][0],
                                         "env": dict_value(given["--set-env-vars"][0])}]}}}}
        return ""
    if group == ("run", "services") and verb == "add-iam-policy-binding":
        binding = [name, given["--member"][0], given["--role"][0]]
        if binding not in state.setdefault("bindings", []):
            state["bindings"].append(binding)
        return ""
    if group == ("composer", "environments"):
        return composer(verb, name, rest, given, state)
    return False


def composer(verb: str, name: str, rest: list[str], given: dict[str, list[str]], state: dict):
    environments = state.setdefault("environments", {})
    if verb == "create":
        environments[name] = {"config": {
            "dagGcsPrefix": state["new_environment_bucket"] + "/dags",
            "nodeConfig": {"serviceAccount": f"composer@{given['--project'][0]}.iam.gserviceaccount.com"},
            "softwareConfig": {"imageVersion": given["--image-version"][0] + "-build.1",
                               "envVariables": dict_value(given["--env-variables"][0]),
                               "airflowConfigOverrides": dict_value(given["--airflow-configs"][0]),
                               "pypiPackages": {}}}}
        return ""
    if name not in environments:
        return None
    software = environments[name]["config"]["softwareConfig"]
    if verb == "update":
        for package in given.get("--update-pypi-package", []):
            package_name, version = package.split("==")
            software["pypiPackages"][package_name] = "==" + version
        for flag, key in (("--update-env-variables", "envVariables"),
                          ("--update-airflow-configs", "airflowConfigOverrides")):
            for value in given.get(flag, []):
                software[key].update(dict_value(value))
        for version in given.get("--image-version", []):
            software["imageVersion"] = version + "-build.1"
        return ""
    if verb == "run":  # environments run NAME … pools -- set POOL SLOTS DESCRIPTION
        command = rest[rest.index("--") + 1:]
        if rest[rest.index("--") - 1] == "pools" and command[0] == "set":
            state.setdefault("pools", {})[command[1]] = int(command[2])
            return ""
    return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
