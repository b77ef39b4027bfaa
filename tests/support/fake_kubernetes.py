"""A fake Kubernetes API server on 127.0.0.1 whose pods are local processes, for tests without a cluster.

What it simulates, through the real REST paths and JSON shapes of the core v1 API: creating, reading,
listing (label selectors ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``), patching (labels and annotations)
and deleting pods; a pod's log, followed while it runs, with RFC3339Nano timestamps on request;
Secrets (create, read), which a container's ``env`` takes values from through ``secretKeyRef``;
an empty event list; bearer-token authentication; a kubeconfig and an Airflow connection pointing at it.

Creating a pod starts its one container at once (the create reply still shows it Pending, as the API
server's does): ``command + args`` as a local process (no shell) in its own process group, in this
process's working directory, with the environment given at construction plus ``HOSTNAME`` and the
container's ``env`` (``value``, ``secretKeyRef``, ``fieldRef`` to the pod's name, namespace or uid);
stdout and stderr become the pod's log. The pod is Running while the process runs, then Succeeded or
Failed with its exit code (killed by signal N: 128 + N, as in a container), the log's tail as the
message under ``terminationMessagePolicy: FallbackToLogsOnError``. When the process exits, whatever is
left in its process group is killed, as a container's processes are. Deleting a pod sends SIGTERM to
the group, SIGKILL after the grace period, and removes the pod once the process is gone.
``fail_next`` makes a coming pod fail; every request, created pod, started process and deletion is
recorded for tests to assert on.

What it does not do: no scheduling, nodes, images (``command[0]`` runs from PATH, or from the
``executables`` map), pulls, volumes (accepted, never mounted), workingDir, users and security
contexts, service accounts, resources or limits, probes, restarts, ConfigMaps, ``$(VAR)`` expansion,
watches, exec or events (the event list is always empty). Pods it cannot run honestly (no command,
init or second containers, ``envFrom``, other ``valueFrom`` sources) are refused with 422 rather than
half-run. JSON merge patch stands in for strategic merge patch (they differ only in how lists merge),
and only labels and annotations may be patched. A Secret a container needs but cannot have ends the pod
Failed with reason CreateContainerConfigError at once, where a real kubelet keeps it Pending and retries
(so a pod task fails at once instead of after its startup timeout).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

CONTEXT = "fake"  # the kubeconfig's one context, cluster and user
DEFAULT_GRACE_SECONDS = 30  # spec.terminationGracePeriodSeconds' default
TERMINATION_LOG_LINES, TERMINATION_LOG_BYTES = 80, 2048  # what FallbackToLogsOnError keeps of the log
FIELD_REFS = {"metadata.name", "metadata.namespace", "metadata.uid"}
NAMESPACED = r"/api/v1/namespaces/(?P<namespace>[^/]+)"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # the JSON received, or None


@dataclass(frozen=True)
class Deletion:
    namespace: str
    name: str
    at: float  # time.time()
    grace_period_seconds: int


@dataclass(frozen=True)
class StartedProcess:
    namespace: str
    pod: str
    pid: int
    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class _Failure:
    match: dict[str, str]
    after_lines: int | None
    after_text: str | None

    @property
    def at_start(self) -> bool:
        return self.after_lines is None and self.after_text is None

    def due(self, lines: int, line: bytes) -> bool:
        """Whether the process is killed now, having written ``lines`` lines, the last ``line``."""
        return lines == self.after_lines or (self.after_text is not None and self.after_text.encode() in line)


class ApiError(Exception):
    """A request the API answers with a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


class _ConfigError(Exception):
    """The container cannot be configured (a Secret or key it needs is missing)."""


@dataclass
class _Container:
    name: str
    image: str
    fallback_to_logs: bool  # terminationMessagePolicy FallbackToLogsOnError
    process: subprocess.Popen | None = None
    log: list[tuple[int, bytes]] = field(default_factory=list)  # (time in ns, line)
    started_ns: int | None = None
    finished_ns: int | None = None
    exit_code: int | None = None
    reason: str | None = None  # terminated: Completed, Error, StartError; waiting: CreateContainerConfigError
    message: str | None = None

    @property
    def finished(self) -> bool:
        return self.exit_code is not None

    @property
    def running(self) -> bool:
        return self.started_ns is not None and not self.finished

    @property
    def waiting(self) -> bool:
        return self.started_ns is None and not self.finished and self.reason is not None


@dataclass
class _Pod:
    manifest: dict  # apiVersion, kind, metadata, spec as stored
    container: _Container
    deleting: bool = False

    @property
    def namespace(self) -> str:
        return self.manifest["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def labels(self) -> dict[str, str]:
        return self.manifest["metadata"].get("labels") or {}


@dataclass(frozen=True)
class _Request:
    query: dict[str, str]
    body: Any
    content_type: str


@dataclass(frozen=True)
class _Reply:
    code: int
    body: dict | bytes | Iterator[bytes]  # JSON, plain text, or plain text streamed as it comes


def rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 10**9))


def rfc3339_nano(ns: int) -> str:
    """Go's RFC3339Nano, as the kubelet stamps log lines: nanoseconds, trailing zeros dropped."""
    seconds, fraction = divmod(ns, 10**9)
    digits = f"{fraction:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (f".{digits}Z" if digits else "Z")


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based label selector terms, all of which must hold."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "(" in term or " " in term:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: set-based selector {term!r} "
                                              "is not simulated")
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = re.split("==?", term, maxsplit=1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            merged[key] = merge_patch(merged[key] if isinstance(merged.get(key), dict) else {}, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def exit_code_of(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # -9 (SIGKILL) -> 137


def signal_group(process: subprocess.Popen, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def unsupported(spec: dict) -> str | None:
    """Why the fake cannot run this pod spec, or None."""
    containers = spec.get("containers") or []
    if len(containers) != 1:
        return "the fake runs exactly one container per pod"
    if spec.get("initContainers"):
        return "the fake runs no init containers"
    container = containers[0]
    if not container.get("command"):
        return "the fake has no images to take an entrypoint from: give the container a command"
    if container.get("envFrom"):
        return "the fake does not simulate envFrom"
    for entry in container.get("env") or []:
        source = entry.get("valueFrom")
        if source is None:
            continue
        if set(source) - {"secretKeyRef", "fieldRef"}:
            return f"env {entry['name']}: the fake resolves only secretKeyRef and fieldRef"
        if "fieldRef" in source and source["fieldRef"].get("fieldPath") not in FIELD_REFS:
            return f"env {entry['name']}: the fake resolves only fieldRef {sorted(FIELD_REFS)}"
    return None


class FakeKubernetes:
    """The fake API server; ``with FakeKubernetes(...) as api:`` runs it on ``api.url``.

    ``base_env``: the environment every container starts from (default: this process's PATH).
    ``executables``: maps a container's ``command[0]`` to the local executable that stands in for it.
    """

    def __init__(self, base_env: Mapping[str, str] | None = None, executables: Mapping[str, str] | None = None):
        self.base_env = dict(base_env) if base_env is not None else {"PATH": os.environ.get("PATH", os.defpath)}
        self.executables = dict(executables or {})
        self.token = uuid.uuid4().hex
        self._changed = threading.Condition(threading.RLock())
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._secrets: dict[tuple[str, str], dict] = {}
        self._failures: list[_Failure] = []
        self._containers: list[_Container] = []
        self._threads: list[threading.Thread] = []
        self._requests: list[RecordedRequest] = []
        self._created_pods: list[dict] = []
        self._deletions: list[Deletion] = []
        self._started: list[StartedProcess] = []
        self._resource_version = 0
        self._httpd = _Server(self)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ---- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> FakeKubernetes:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill every pod's process group, wait for their output, stop serving."""
        with self._changed:
            left = [c.process for c in self._containers if c.process is not None and not c.finished]
        for process in left:
            signal_group(process, signal.SIGKILL)
        for thread in list(self._threads):
            thread.join(timeout=10)
        self._httpd.shutdown()
        self._httpd.server_close()

    # ---- what tests set up -------------------------------------------------------------------------

    def kubeconfig(self, path: str | os.PathLike) -> Path:
        """Write a kubeconfig (context ``fake``: this server, no TLS, a bearer token) to ``path``."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT,
            "clusters": [{"name": CONTEXT, "cluster": {"server": self.url}}],
            "users": [{"name": CONTEXT, "user": {"token": self.token}}],
            "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": "default"}}],
        }
        Path(path).write_text(json.dumps(config, indent=2))  # JSON is YAML
        return Path(path)

    @staticmethod
    def airflow_connection(kubeconfig_path: str | os.PathLike) -> str:
        """The value of an ``AIRFLOW_CONN_<ID>`` variable for a Kubernetes connection to this server."""
        return json.dumps({"conn_type": "kubernetes",
                           "extra": {"kube_config_path": str(kubeconfig_path), "cluster_context": CONTEXT}})

    def add_secret(self, name: str, values: Mapping[str, str], namespace: str = "default") -> None:
        """Store an Opaque Secret, as ``kubectl create secret generic`` would."""
        data = {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}
        self._create_secret(_Request({}, {"metadata": {"name": name}, "data": data}, "application/json"), namespace)

    def fail_next(self, match: Mapping[str, str], after_lines: int | None = None,
                  after_text: str | None = None) -> None:
        """The next pod created whose labels include ``match`` fails: its process is SIGKILLed (exit code
        137) once it has written ``after_lines`` log lines, or a line containing ``after_text``; with
        neither, its container ends with exit code 1 at start, its command never run. Either way the
        pod ends Failed, reason Error."""
        with self._changed:
            self._failures.append(_Failure(dict(match), after_lines, after_text))

    # ---- what tests assert on ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._changed:
            return list(self._requests)

    @property
    def created_pods(self) -> list[dict]:
        """Every pod created, as the JSON received."""
        with self._changed:
            return copy.deepcopy(self._created_pods)

    @property
    def deletions(self) -> list[Deletion]:
        with self._changed:
            return list(self._deletions)

    @property
    def started(self) -> list[StartedProcess]:
        """Every container process started: its pid, argv and environment."""
        with self._changed:
            return list(self._started)

    def pod(self, name: str, namespace: str = "default") -> dict | None:
        """The pod as ``GET`` returns it, or None once it is gone."""
        with self._changed:
            pod = self._pods.get((namespace, name))
            return self._pod_object(pod) if pod else None

    # ---- HTTP --------------------------------------------------------------------------------------

    def _routes(self) -> list[tuple[str, str, Callable[..., _Reply]]]:
        pods, pod = rf"{NAMESPACED}/pods", rf"{NAMESPACED}/pods/(?P<name>[^/]+)"
        return [
            ("GET", "/version", self._version),
            ("GET", "/api", self._api_versions),
            ("GET", "/api/v1", self._api_resources),
            ("GET", pods, self._list_pods),
            ("POST", pods, self._create_pod),
            ("GET", pod, self._read_pod),
            ("PATCH", pod, self._patch_pod),
            ("DELETE", pod, self._delete_pod),
            ("GET", rf"{pod}/log", self._read_log),
            ("POST", rf"{NAMESPACED}/secrets", self._create_secret),
            ("GET", rf"{NAMESPACED}/secrets/(?P<name>[^/]+)", self._read_secret),
            ("GET", rf"{NAMESPACED}/events", self._list_events),
        ]

    def _handle(self, method: str, path: str, authorization: str | None, request: _Request) -> _Reply:
        with self._changed:
            self._requests.append(RecordedRequest(method, path, request.query, copy.deepcopy(request.body)))
        try:
            if authorization != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            matched = [(route_method, match, call) for route_method, pattern, call in self._routes()
                       if (match := re.fullmatch(pattern, path))]
            for route_method, match, call in matched:
                if route_method == method:
                    return call(request, **match.groupdict())
            if matched:
                raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {path}")
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        except ApiError as error:
            return _Reply(error.code, error.status())

    def _version(self, request: _Request) -> _Reply:
        return _Reply(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"})

    def _api_versions(self, request: _Request) -> _Reply:
        return _Reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("http://")}]})

    def _api_resources(self, request: _Request) -> _Reply:
        def resource(name: str, kind: str, verbs: list[str]) -> dict:
            return {"name": name, "singularName": "", "namespaced": True, "kind": kind, "verbs": verbs}

        return _Reply(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            resource("pods", "Pod", ["create", "delete", "get", "list", "patch"]),
            resource("pods/log", "Pod", ["get"]),
            resource("secrets", "Secret", ["create", "get"]),
            resource("events", "Event", ["list"]),
        ]})

    # ---- pods --------------------------------------------------------------------------------------

    def _next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _find_pod(self, namespace: str, name: str) -> _Pod:
        pod = self._pods.get((namespace, name))
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        return pod

    def _create_pod(self, request: _Request, namespace: str) -> _Reply:
        body = request.body if isinstance(request.body, dict) else {}
        name = (body.get("metadata") or {}).get("name")
        if not name:
            raise ApiError(422, "Invalid", "Pod is invalid: metadata.name: Required value")
        reason = unsupported(body.get("spec") or {})
        if reason:
            raise ApiError(422, "Invalid", f"Pod {name!r} is invalid here: {reason}")
        with self._changed:
            if (namespace, name) in self._pods:
                raise ApiError(409, "AlreadyExists", f'pods "{name}" already exists')
            self._created_pods.append(copy.deepcopy(body))
            pod = self._new_pod(namespace, body)
            self._pods[(namespace, name)] = pod
            reply = self._pod_object(pod)  # as the API server answers: before the kubelet starts it
            self._start(pod)
        return _Reply(201, reply)

    def _new_pod(self, namespace: str, body: dict) -> _Pod:
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": copy.deepcopy(body["metadata"]),
                    "spec": {**copy.deepcopy(body["spec"]), "nodeName": "fake-node"}}
        manifest["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()),
                                    resourceVersion=self._next_resource_version(),
                                    creationTimestamp=rfc3339(time.time_ns()))
        spec = manifest["spec"]["containers"][0]
        container = _Container(spec["name"], spec.get("image", ""),
                               spec.get("terminationMessagePolicy") == "FallbackToLogsOnError")
        return _Pod(manifest, container)

    def _read_pod(self, request: _Request, namespace: str, name: str) -> _Reply:
        with self._changed:
            return _Reply(200, self._pod_object(self._find_pod(namespace, name)))

    def _list_pods(self, request: _Request, namespace: str) -> _Reply:
        selector = request.query.get("labelSelector", "")
        with self._changed:
            pods = [pod for (ns, _), pod in self._pods.items()
                    if ns == namespace and selector_matches(selector, pod.labels)]
            items = [{k: v for k, v in self._pod_object(pod).items() if k not in ("apiVersion", "kind")}
                     for pod in pods]
            return _Reply(200, {"apiVersion": "v1", "kind": "PodList",
                                "metadata": {"resourceVersion": str(self._resource_version)}, "items": items})

    def _patch_pod(self, request: _Request, namespace: str, name: str) -> _Reply:
        if request.content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise ApiError(415, "UnsupportedMediaType", f"the fake applies merge patches, not {request.content_type}")
        patch = request.body
        if (not isinstance(patch, dict) or set(patch) - {"metadata"}
                or set(patch.get("metadata") or {}) - {"labels", "annotations"}):
            raise ApiError(422, "Invalid", "the fake patches only metadata.labels and metadata.annotations")
        with self._changed:
            pod = self._find_pod(namespace, name)
            pod.manifest = merge_patch(pod.manifest, patch)
            pod.manifest["metadata"]["resourceVersion"] = self._next_resource_version()
            return _Reply(200, self._pod_object(pod))

    def _delete_pod(self, request: _Request, namespace: str, name: str) -> _Reply:
        with self._changed:
            pod = self._find_pod(namespace, name)
            grace = self._grace_period(request, pod)
            self._deletions.append(Deletion(namespace, name, time.time(), grace))
            pod.deleting = True
            pod.manifest["metadata"].update(deletionTimestamp=rfc3339(time.time_ns()),
                                            deletionGracePeriodSeconds=grace,
                                            resourceVersion=self._next_resource_version())
            reply = self._pod_object(pod)
            if pod.container.running:
                self._spawn(self._terminate, pod.container, grace)
            else:
                del self._pods[(namespace, name)]
        return _Reply(200, reply)

    @staticmethod
    def _grace_period(request: _Request, pod: _Pod) -> int:
        options = request.body if isinstance(request.body, dict) else {}  # DeleteOptions
        for given in (request.query.get("gracePeriodSeconds"), options.get("gracePeriodSeconds"),
                      pod.manifest["spec"].get("terminationGracePeriodSeconds")):
            if given is not None:
                return int(given)
        return DEFAULT_GRACE_SECONDS

    def _terminate(self, container: _Container, grace: int) -> None:
        """What the kubelet does to a deleted pod's container: SIGTERM, then SIGKILL after ``grace`` s."""
        signal_group(container.process, signal.SIGTERM)
        with self._changed:
            if self._changed.wait_for(lambda: container.finished, timeout=grace):
                return
        signal_group(container.process, signal.SIGKILL)

    # ---- pod status --------------------------------------------------------------------------------

    def _pod_object(self, pod: _Pod) -> dict:
        return {**copy.deepcopy(pod.manifest), "status": self._pod_status(pod)}

    def _pod_status(self, pod: _Pod) -> dict:
        container = pod.container
        created = pod.manifest["metadata"]["creationTimestamp"]
        if container.started_ns is None and not container.finished and not container.waiting:
            return {"phase": "Pending", "qosClass": "BestEffort"}  # not yet seen by the kubelet
        ready = "True" if container.running else "False"
        conditions = [{"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": created}
                      for kind, status in [("PodReadyToStartContainers", "True"), ("Initialized", "True"),
                                           ("Ready", ready), ("ContainersReady", ready), ("PodScheduled", "True")]]
        status = {"phase": self._phase(container), "conditions": conditions, "hostIP": "127.0.0.1",
                  "podIP": "127.0.0.1", "startTime": created, "qosClass": "BestEffort",
                  "containerStatuses": [self._container_status(container)]}
        if container.waiting:
            status.update(reason=container.reason, message=container.message)
        return status

    @staticmethod
    def _phase(container: _Container) -> str:
        if container.running:
            return "Running"
        return "Succeeded" if container.exit_code == 0 else "Failed"

    @staticmethod
    def _container_status(container: _Container) -> dict:
        status = {"name": container.name, "image": container.image, "imageID": "", "restartCount": 0,
                  "ready": container.running, "started": container.running, "lastState": {}}
        if container.process is not None:
            status["containerID"] = f"fake://{container.process.pid}"
        if container.waiting:
            status["state"] = {"waiting": {"reason": container.reason, "message": container.message}}
        elif container.running:
            status["state"] = {"running": {"startedAt": rfc3339(container.started_ns)}}
        else:
            terminated = {"exitCode": container.exit_code, "reason": container.reason,
                          "startedAt": rfc3339(container.started_ns or container.finished_ns),
                          "finishedAt": rfc3339(container.finished_ns)}
            if container.message:
                terminated["message"] = container.message
            if "containerID" in status:
                terminated["containerID"] = status["containerID"]
            status["state"] = {"terminated": terminated}
        return status

    # ---- running a pod's container -----------------------------------------------------------------

    def _start(self, pod: _Pod) -> None:
        """Start the container's process (called with the lock held), or end it as the kubelet would."""
        container = pod.container
        self._containers.append(container)
        spec = pod.manifest["spec"]["containers"][0]
        try:
            env = self._container_env(pod, spec)
        except _ConfigError as error:
            container.reason, container.message = "CreateContainerConfigError", str(error)
            return
        failure = self._take_failure(pod.labels)
        if failure is not None and failure.at_start:
            self._end(pod, 1, time.time_ns())
            return
        argv = [*spec["command"], *(spec.get("args") or [])]
        argv[0] = self.executables.get(argv[0], argv[0])
        try:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            container.finished_ns, container.exit_code = time.time_ns(), 128
            container.reason, container.message = "StartError", str(error)
            return
        container.process, container.started_ns = process, time.time_ns()
        self._started.append(StartedProcess(pod.namespace, pod.name, process.pid, argv, env))
        self._spawn(self._watch, pod, failure)

    def _container_env(self, pod: _Pod, spec: dict) -> dict[str, str]:
        env = {**self.base_env, "HOSTNAME": pod.name}
        for entry in spec.get("env") or []:
            source = entry.get("valueFrom")
            if source is None:
                env[entry["name"]] = entry.get("value", "")
            elif "fieldRef" in source:
                env[entry["name"]] = pod.manifest["metadata"][source["fieldRef"]["fieldPath"].split(".", 1)[1]]
            else:
                value = self._secret_value(pod.namespace, source["secretKeyRef"])
                if value is not None:
                    env[entry["name"]] = value
        return env

    def _secret_value(self, namespace: str, ref: dict) -> str | None:
        """A secretKeyRef's value; None when it is missing and optional."""
        secret = self._secrets.get((namespace, ref["name"]))
        if secret is None or ref["key"] not in secret["data"]:
            if ref.get("optional"):
                return None
            if secret is None:
                raise _ConfigError(f'secret "{ref["name"]}" not found')
            raise _ConfigError(f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}")
        return base64.b64decode(secret["data"][ref["key"]]).decode()

    def _take_failure(self, labels: Mapping[str, str]) -> _Failure | None:
        for failure in self._failures:
            if failure.match.items() <= labels.items():
                self._failures.remove(failure)
                return failure
        return None

    def _spawn(self, target: Callable, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _watch(self, pod: _Pod, failure: _Failure | None) -> None:
        """Until the process exits: its output into the log; then what is left of the container is
        killed, and the exit recorded."""
        process = pod.container.process
        reader = threading.Thread(target=self._collect_output, args=(pod.container, failure), daemon=True)
        reader.start()
        returncode = process.wait()
        signal_group(process, signal.SIGKILL)
        reader.join()
        with self._changed:
            self._end(pod, exit_code_of(returncode), time.time_ns())

    def _collect_output(self, container: _Container, failure: _Failure | None) -> None:
        lines = 0
        if failure is not None and failure.after_lines == 0:
            signal_group(container.process, signal.SIGKILL)
        for line in iter(container.process.stdout.readline, b""):
            with self._changed:
                container.log.append((time.time_ns(), line))
                self._changed.notify_all()
            lines += 1
            if failure is not None and failure.due(lines, line):
                signal_group(container.process, signal.SIGKILL)
        container.process.stdout.close()

    def _end(self, pod: _Pod, exit_code: int, at_ns: int) -> None:
        """Record the container's exit (lock held); a deleted pod goes once its process has."""
        container = pod.container
        container.exit_code, container.finished_ns = exit_code, at_ns
        container.reason = "Completed" if exit_code == 0 else "Error"
        if exit_code != 0 and container.fallback_to_logs:
            tail = b"".join(line for _, line in container.log[-TERMINATION_LOG_LINES:])[-TERMINATION_LOG_BYTES:]
            container.message = tail.decode(errors="replace") or None
        if pod.deleting and self._pods.get((pod.namespace, pod.name)) is pod:
            del self._pods[(pod.namespace, pod.name)]
        self._changed.notify_all()

    # ---- logs --------------------------------------------------------------------------------------

    def _read_log(self, request: _Request, namespace: str, name: str) -> _Reply:
        with self._changed:
            pod = self._find_pod(namespace, name)
            container = pod.container
            wanted = request.query.get("container", container.name)
            if wanted != container.name:
                raise ApiError(400, "BadRequest", f"container {wanted} is not valid for pod {name}")
            if container.started_ns is None and not container.finished:
                raise ApiError(400, "BadRequest", f'container "{container.name}" in pod "{name}" is waiting to '
                                                  f"start: {container.reason}")
        since = request.query.get("sinceSeconds")
        since_ns = time.time_ns() - int(since) * 10**9 if since else 0
        timestamps = request.query.get("timestamps", "").lower() == "true"
        lines = self._log_lines(container, since_ns, timestamps)
        if request.query.get("follow", "").lower() == "true":
            return _Reply(200, self._follow(container, lines))
        return _Reply(200, b"".join(self._follow(container, lines, until_now=True)))

    @staticmethod
    def _log_lines(container: _Container, since_ns: int, timestamps: bool) -> Callable[[int], tuple[list[bytes], int]]:
        """A reader of the container's log from an index on: the formatted lines and the next index."""
        def read(start: int) -> tuple[list[bytes], int]:
            new = container.log[start:]
            kept = [(f"{rfc3339_nano(at)} ".encode() if timestamps else b"") + line
                    for at, line in new if at >= since_ns]
            return kept, start + len(new)
        return read

    def _follow(self, container: _Container, read: Callable, until_now: bool = False) -> Iterator[bytes]:
        """The log's lines as they come, ending when the process has exited (or at once, ``until_now``)."""
        index = 0
        while True:
            with self._changed:
                if not until_now:
                    self._changed.wait_for(lambda: len(container.log) > index or container.finished)
                lines, index = read(index)
                done = until_now or (container.finished and index == len(container.log))
            yield from lines
            if done:
                return

    # ---- secrets and events ------------------------------------------------------------------------

    def _create_secret(self, request: _Request, namespace: str) -> _Reply:
        body = request.body if isinstance(request.body, dict) else {}
        name = (body.get("metadata") or {}).get("name")
        if not name:
            raise ApiError(422, "Invalid", "Secret is invalid: metadata.name: Required value")
        data = dict(body.get("data") or {})
        data.update({key: base64.b64encode(value.encode()).decode()
                     for key, value in (body.get("stringData") or {}).items()})
        with self._changed:
            if (namespace, name) in self._secrets:
                raise ApiError(409, "AlreadyExists", f'secrets "{name}" already exists')
            metadata = {**copy.deepcopy(body["metadata"]), "namespace": namespace, "uid": str(uuid.uuid4()),
                        "resourceVersion": self._next_resource_version(),
                        "creationTimestamp": rfc3339(time.time_ns())}
            secret = {"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
                      "type": body.get("type", "Opaque"), "data": data}
            self._secrets[(namespace, name)] = secret
            return _Reply(201, copy.deepcopy(secret))

    def _read_secret(self, request: _Request, namespace: str, name: str) -> _Reply:
        with self._changed:
            secret = self._secrets.get((namespace, name))
            if secret is None:
                raise ApiError(404, "NotFound", f'secrets "{name}" not found')
            return _Reply(200, copy.deepcopy(secret))

    def _list_events(self, request: _Request, namespace: str) -> _Reply:
        with self._changed:
            version = str(self._resource_version)
        return _Reply(200, {"apiVersion": "v1", "kind": "EventList", "metadata": {"resourceVersion": version},
                            "items": []})


class _Server(ThreadingHTTPServer):
    def __init__(self, api: FakeKubernetes):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api = api


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked log streams, as the client expects
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PATCH(self) -> None:
        self._answer("PATCH")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def _answer(self, method: str) -> None:
        url = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(_Reply(400, ApiError(400, "BadRequest", "the request body is not JSON").status()))
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        request = _Request(dict(parse_qsl(url.query, keep_blank_values=True)), body, content_type)
        self._send(self.server.api._handle(method, url.path, self.headers.get("Authorization"), request))

    def _send(self, reply: _Reply) -> None:
        if isinstance(reply.body, (dict, bytes)):
            is_json = isinstance(reply.body, dict)
            data = json.dumps(reply.body).encode() if is_json else reply.body
            self.send_response(reply.code)
            self.send_header("Content-Type", "application/json" if is_json else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(reply.code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in reply.body:
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # the client stopped following
            self.close_connection = True
