"""The services' images, checked without building them: no docker daemon is available here, so each
Dockerfile is read instead (FROM, WORKDIR, ENV, COPY, RUN, CMD/ENTRYPOINT), its COPY sources are
checked against the repository and the root ``.dockerignore`` (Docker's matching rules, below), and
the image's own command is run in the venv — cwd the repository root, which holds what ``WORKDIR /app``
holds, with the Dockerfile's ENV, PORT set as Cloud Run sets it and what a deploy sets — until its
``/healthz`` answers. ``containers/cloudbuild.yaml`` is checked to build each of them."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import emprocess

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("fiji", "emwrite")
LOCK = "requirements/lock.txt"
HEALTHY_WITHIN = 60.0  # seconds: the app imports every stage of its service


@dataclass
class Dockerfile:
    base: str = ""
    workdir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources, destination)
    runs: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    @property
    def command(self) -> list[str]:
        """What the container runs: a shell-form ENTRYPOINT alone, else ENTRYPOINT then CMD."""
        if self.entrypoint[:2] == ["/bin/sh", "-c"]:
            return self.entrypoint
        return self.entrypoint + self.cmd


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments) in order: comments and blank lines dropped (also inside a
    continued instruction, as Docker does), '\\' continuations joined."""
    found, pending = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    return found


def exec_form(arguments: str) -> list[str]:
    """The argv of a CMD or ENTRYPOINT: the JSON form as written, the shell form through /bin/sh -c."""
    return json.loads(arguments) if arguments.startswith("[") else ["/bin/sh", "-c", arguments]


def parse_dockerfile(path: Path) -> Dockerfile:
    image = Dockerfile()
    for keyword, arguments in instructions(path.read_text()):
        if keyword == "FROM":
            image.base = arguments.split()[0]
        elif keyword == "WORKDIR":
            image.workdir = arguments
        elif keyword == "ENV":
            words = shlex.split(arguments)
            if "=" in words[0]:
                image.env.update(word.split("=", 1) for word in words)
            else:  # the legacy form: ENV KEY value with spaces
                image.env[words[0]] = " ".join(words[1:])
        elif keyword == "COPY":
            words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
            paths = [word for word in words if not word.startswith("--")]
            image.copies.append((paths[:-1], paths[-1]))
        elif keyword == "RUN":
            image.runs.append(arguments)
        elif keyword == "ENTRYPOINT":
            image.entrypoint = exec_form(arguments)
        elif keyword == "CMD":
            image.cmd = exec_form(arguments)
    return image


def dockerfile(service: str) -> Dockerfile:
    return parse_dockerfile(REPO / "containers" / service / "Dockerfile")


# ---- .dockerignore, as Docker reads it ----------------------------------------------------------------


def glob_regex(pattern: str) -> str:
    """Docker's pattern syntax (Go's filepath.Match, plus '**'): '*' and '?' stay within a path segment,
    '**' spans any number of them, '[...]' is a character class."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            regex, i = regex + pattern[i:end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return regex


def ignore_rules(text: str) -> list[tuple[re.Pattern, bool]]:
    """(pattern, re-includes) per rule: '#' lines are comments, '!' re-includes, patterns are cleaned
    paths relative to the context's root (a leading '/' means the root too)."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((re.compile(glob_regex(pattern)), keep))
    return rules


def excluded(path: str, rules: list[tuple[re.Pattern, bool]]) -> bool:
    """Whether Docker leaves ``path`` out of the context: the last rule matching it or one of its
    parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    out = False
    for pattern, keep in rules:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            out = not keep
    return out


RULES = ignore_rules((REPO / ".dockerignore").read_text())


def is_cache(path: str) -> bool:
    return "__pycache__" in path.split("/") or path.endswith(".pyc")


def assert_in_context(source: str) -> None:
    """``source`` exists and reaches the build: it and, for a folder, every file in it but caches."""
    path = REPO / source
    assert path.exists(), f"COPY {source}: not in the repository"
    assert not excluded(source, RULES), f"COPY {source}: excluded by .dockerignore"
    files = [p.relative_to(REPO).as_posix() for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    left_out = [f for f in files if excluded(f, RULES) and not is_cache(f)]
    assert not left_out, f"COPY {source}: .dockerignore leaves out {left_out[:5]}"


@pytest.mark.parametrize(("pattern", "path", "out"), [
    ("tests", "tests/test_images.py", True),  # a folder's rule covers what it holds
    ("tests", "emprocess/tests", False),  # rules are relative to the root, not any folder
    ("**/__pycache__", "emprocess/storage/__pycache__/urls.cpython-311.pyc", True),
    ("**/*.py[cod]", "a.pyc", True),
    ("*.egg-info", "emprocess.egg-info/PKG-INFO", True),
    ("*.md", "docs/a.md", False),  # '*' stays within a segment
    ("/data", "data/stack/img00000.png", True),
])
def test_ignore_rules_match_as_docker_matches(pattern, path, out):
    assert excluded(path, ignore_rules(pattern)) is out


def test_ignore_rules_last_match_wins():
    rules = ignore_rules("docs\n!docs/keep.md\n")
    assert excluded("docs/a.md", rules) and not excluded("docs/keep.md", rules)


def test_dockerignore_keeps_out_tests_and_data_and_keeps_what_the_images_copy():
    for path in ["tests/conftest.py", "benchmarks/align.py", "data/stack/img00000.png", ".venv/bin/python",
                 ".git/HEAD", "demo-output/sample/conf.json", "emprocess/__pycache__/cli.cpython-311.pyc",
                 ".pytest_cache/v/cache/nodeids"]:
        assert excluded(path, RULES), f"{path} would be in the build context"
    for service in SERVICES:
        for sources, _ in dockerfile(service).copies:
            for source in sources:
                assert_in_context(source)


# ---- each service's image --------------------------------------------------------------------------


@pytest.fixture
def started():
    """Start processes; stop each by its PID at the end (terminate, then kill), whatever happened."""
    processes: list[subprocess.Popen] = []

    def start(argv: list[str], **options) -> subprocess.Popen:
        processes.append(subprocess.Popen(argv, **options))
        return processes[-1]

    try:
        yield start
    finally:
        for process in processes:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def healthz(port: int, process: subprocess.Popen, log: Path) -> dict:
    """``/healthz``'s answer once it is 200; fails, with the process's output, if it exits or is late."""
    deadline = time.monotonic() + HEALTHY_WITHIN
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the service exited ({process.returncode}) before answering:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    return json.loads(answer.read())
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    pytest.fail(f"no 200 from /healthz within {HEALTHY_WITHIN} s:\n{log.read_text()}")


@pytest.mark.parametrize("service", SERVICES)
def test_image_installs_the_lock_and_its_command_serves(service, tmp_path, started):
    import psutil

    from emprocess.workflow.local_run import free_port

    image = dockerfile(service)
    assert image.base.startswith("python:3.11"), "the lock is compiled for Python 3.11 (Makefile, lock)"
    assert image.workdir == "/app"
    for sources, _ in image.copies:
        for source in sources:
            assert_in_context(source)
    installs = [run for run in image.runs if "pip install" in run]
    assert f"-r {LOCK}" in installs[0], "dependencies come from the lock, first"
    assert all(f"-r {LOCK}" in run or "--no-deps" in run for run in installs), "nothing else resolves versions"
    lock_copied = next(i for i, (sources, _) in enumerate(image.copies) if LOCK in sources)
    assert lock_copied == 0, "the lock is copied (and installed) before the code, so code edits keep that layer"

    port = free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the venv's, not resolved
        "HOME": str(tmp_path),
        **image.env,
        "PORT": str(port),  # as Cloud Run sets it
        "EMPROCESS_ALLOWED_PREFIXES": f"file://{tmp_path}/data",  # as a deploy sets it
    }
    log = tmp_path / f"{service}.log"
    with log.open("wb") as output:
        process = started(image.command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    assert healthz(port, process, log) == {"ok": True, "service": service, "version": emprocess.__version__}
    # the shell exec'd the server, so the signal Cloud Run sends to stop an instance reaches it
    assert "uvicorn" in " ".join(psutil.Process(process.pid).cmdline())
    stop(process)
    assert "Application shutdown complete." in log.read_text(), "SIGTERM stops it gracefully"


# ---- Cloud Build -----------------------------------------------------------------------------------


def test_cloud_build_builds_either_service_from_the_root_and_pushes_it():
    import yaml

    text = (REPO / "containers" / "cloudbuild.yaml").read_text()
    assert "gcloud builds submit . --config containers/cloudbuild.yaml" in text.split("steps:")[0]
    build = yaml.safe_load(text)
    (step,) = build["steps"]
    assert step["args"] == ["build", "-f", "containers/${_SERVICE}/Dockerfile", "-t", "${_IMAGE}", "."]
    assert build["images"] == ["${_IMAGE}"]
    for service in SERVICES:
        assert (REPO / step["args"][2].replace("${_SERVICE}", service)).is_file()
