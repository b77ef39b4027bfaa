"""``emprocess admin bucket`` against the real APIs: moto's S3 server and the GCS emulator (and folders
where a command means something for them). State is read back through each bucket's own API."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emprocess import storage
from emprocess.admin.actions import carry_out
from emprocess.admin.buckets import delete_steps
from emprocess.cli import main

BUCKETS = ["s3", "gs"]


def _server(request, scheme: str):
    return request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[scheme])


def emprocess(capsys, *args: str) -> tuple[int, str, str]:
    """``emprocess ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=["file", *BUCKETS])
def location(request, tmp_path) -> str:
    """A location holding 150 objects under ``obj/`` (more than one GCS batch) and one beside them (none
    empty: the GCS emulator fails on empty uploads)."""
    if request.param == "file":
        url = f"file://{tmp_path}/em_chunk_r"
    else:
        url = _server(request, request.param).new_bucket("doomed")
    objects = {storage.join(url, f"obj/{i}"): b"x" * (i + 1) for i in range(150)}
    storage.write_all({**objects, storage.join(url, "objx"): b"y"})
    return url


def exists(url: str) -> bool:
    """Whether the bucket (or folder) exists, asked of its own API."""
    u = storage.parse(url)
    if u.scheme == "file":
        return Path(u.path).exists()
    if u.scheme == "s3":
        import boto3
        from botocore.exceptions import ClientError

        try:
            boto3.client("s3").head_bucket(Bucket=u.bucket)
        except ClientError:
            return False
        return True
    from google.cloud import storage as gcs

    return gcs.Client(project="emprocess-test").lookup_bucket(u.bucket) is not None


# --- delete -----------------------------------------------------------------------------------------------------


def test_delete_removes_the_bucket_with_its_objects_and_a_rerun_says_already_gone(capsys, location):
    code, out, _ = emprocess(capsys, "admin", "bucket", "delete", location, "--yes")
    assert code == 0 and "151 objects deleted" in out
    assert not exists(location)
    code, out, _ = emprocess(capsys, "admin", "bucket", "delete", location, "--yes")
    assert code == 0 and f"{location}: already gone" in out and "nothing to do" in out


def test_delete_of_a_path_deletes_only_the_objects_under_it(capsys, location):
    code, _, _ = emprocess(capsys, "admin", "bucket", "delete", storage.join(location, "obj"), "--yes")
    assert code == 0
    assert storage.listdir(location) == ["objx"]  # "objx" shares the prefix "obj" but is not under obj/


def test_a_dry_run_prints_the_calls_and_deletes_nothing(capsys, location):
    before = storage.listdir(location)
    code, out, _ = emprocess(capsys, "admin", "bucket", "delete", location, "--dry-run")
    assert code == 0 and out.startswith("would delete ") and location in out
    assert exists(location) and storage.listdir(location) == before


def test_delete_without_yes_is_refused_and_deletes_nothing(capsys, location):
    code, _, err = emprocess(capsys, "admin", "bucket", "delete", location)
    assert code == 2 and "not confirmed" in err and "--yes" in err
    assert len(storage.listdir(location)) == 151


@pytest.mark.parametrize("scheme", BUCKETS)
def test_delete_of_a_bucket_that_never_existed_succeeds_as_already_gone(request, capsys, scheme):
    """Documented choice: delete is idempotent, so it cannot tell "never existed" from "deleted before"."""
    url = f"{scheme}://{_server(request, scheme).bucket_name('never')}"
    code, out, _ = emprocess(capsys, "admin", "bucket", "delete", url, "--yes")
    assert code == 0 and f"{url}: already gone" in out


@pytest.mark.parametrize("scheme", BUCKETS)
def test_a_delete_cut_short_is_finished_by_running_it_again(request, capsys, scheme):
    server = _server(request, scheme)
    first, second = server.new_bucket("cut"), server.new_bucket("cut")
    for url in (first, second):
        storage.write(storage.join(url, "a"), b"1")

    def interrupted_before_the_second(line: str) -> None:
        if second in line and not line.startswith("  "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        carry_out(delete_steps([first, second]), dry_run=False, yes=True, out=interrupted_before_the_second)
    assert not exists(first) and exists(second)
    code, out, _ = emprocess(capsys, "admin", "bucket", "delete", first, second, "--yes")
    assert code == 0 and f"{first}: already gone" in out
    assert not exists(second)


def test_delete_needs_urls_or_a_run(capsys):
    code, _, err = emprocess(capsys, "admin", "bucket", "delete", "--yes")
    assert code == 2 and "give the URLs" in err
    code, _, err = emprocess(capsys, "admin", "bucket", "delete", "gs://some-bucket", "--run", "r", "--yes")
    assert code == 2 and "not both" in err


# --- archive ------------------------------------------------------------------------------------------------------


def lifecycle(url: str) -> list[dict]:
    """The bucket's lifecycle rules, as its own API reports them."""
    u = storage.parse(url)
    if u.scheme == "s3":
        import boto3
        from botocore.exceptions import ClientError

        try:
            return boto3.client("s3").get_bucket_lifecycle_configuration(Bucket=u.bucket)["Rules"]
        except ClientError as err:
            assert err.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"
            return []
    from google.cloud import storage as gcs

    return [dict(rule) for rule in gcs.Client(project="emprocess-test").get_bucket(u.bucket).lifecycle_rules]


@pytest.mark.parametrize("scheme", BUCKETS)
def test_archive_adds_one_cold_storage_rule_and_keeps_the_others(request, capsys, scheme):
    url = _server(request, scheme).new_bucket("archived")
    storage.set_expiry(url, 7)
    expiry = lifecycle(url)
    for _ in range(2):
        code, out, _ = emprocess(capsys, "admin", "bucket", "archive", url, "--yes")
        assert code == 0 and "lifecycle rule" in out
    if scheme == "gs":
        archive_rule = {"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"}, "condition": {"age": 0}}
    else:
        archive_rule = {"ID": "emprocess-archive", "Status": "Enabled", "Filter": {"Prefix": ""},
                        "Transitions": [{"Days": 0, "StorageClass": "GLACIER_IR"}]}
    assert lifecycle(url) == [*expiry, archive_rule]


@pytest.mark.parametrize("scheme", BUCKETS)
def test_archive_of_a_path_archives_the_objects_under_it(request, capsys, scheme):
    url = _server(request, scheme).new_bucket("archived")
    code, _, _ = emprocess(capsys, "admin", "bucket", "archive", storage.join(url, "neuroglancer/raw"), "--yes")
    assert code == 0
    [rule] = lifecycle(url)
    if scheme == "gs":
        assert rule["condition"] == {"age": 0, "matchesPrefix": ["neuroglancer/raw/"]}
    else:
        assert rule["Filter"] == {"Prefix": "neuroglancer/raw/"}


@pytest.mark.parametrize("scheme", BUCKETS)
def test_archive_dry_run_and_refusal_change_nothing(request, capsys, scheme):
    url = _server(request, scheme).new_bucket("archived")
    storage.set_expiry(url, 7)
    before = lifecycle(url)
    code, out, _ = emprocess(capsys, "admin", "bucket", "archive", url, "--dry-run")
    assert code == 0 and out.startswith("would add a lifecycle rule")
    code, _, err = emprocess(capsys, "admin", "bucket", "archive", url)
    assert code == 2 and "--yes" in err
    assert lifecycle(url) == before


def test_archive_of_a_folder_is_refused(capsys, tmp_path):
    code, _, err = emprocess(capsys, "admin", "bucket", "archive", f"file://{tmp_path}", "--yes")
    assert code == 2 and f"file://{tmp_path}: archiving means nothing for a folder" in err


# --- set-public, set-private ----------------------------------------------------------------------------------


def public_state(url: str) -> dict:
    """Who may read the bucket and its CORS rules, as its own API reports them."""
    u = storage.parse(url)
    if u.scheme == "gs":
        from google.cloud import storage as gcs

        bucket = gcs.Client(project="emprocess-test").get_bucket(u.bucket)
        policy = bucket.get_iam_policy(requested_policy_version=3)
        return {"public bindings": [b["role"] for b in policy.bindings if "allUsers" in b["members"]],
                "cors": bucket.cors}
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3")

    def answer(call, key):
        try:
            return call(Bucket=u.bucket)[key]
        except ClientError as err:
            return err.response["Error"]["Code"]

    policy = answer(s3.get_bucket_policy, "Policy")
    return {"policy": json.loads(policy) if policy.startswith("{") else policy,
            "cors": answer(s3.get_bucket_cors, "CORSRules"),
            "public access block": answer(s3.get_public_access_block, "PublicAccessBlockConfiguration")}


def private_state(scheme: str) -> dict:
    if scheme == "gs":
        return {"public bindings": [], "cors": []}
    return {"policy": "NoSuchBucketPolicy", "cors": "NoSuchCORSConfiguration",
            "public access block": dict.fromkeys(
                ["BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"], True)}


@pytest.mark.parametrize("scheme", BUCKETS)
def test_set_public_then_set_private_round_trip_each_idempotent(request, capsys, scheme):
    url = _server(request, scheme).new_bucket("viewed")
    for _ in range(2):
        assert emprocess(capsys, "admin", "bucket", "set-public", url, "--yes")[0] == 0
    public = public_state(url)
    if scheme == "gs":
        assert public["public bindings"] == ["roles/storage.objectViewer"]
        assert public["cors"] == [{"origin": ["*"], "method": ["GET", "HEAD"],
                                   "responseHeader": ["Range", "Content-Type"], "maxAgeSeconds": 3600}]
    else:
        assert [s["Principal"] for s in public["policy"]["Statement"]] == ["*"]
        assert [rule["AllowedOrigins"] for rule in public["cors"]] == [["*"]]
        assert public["public access block"]["BlockPublicPolicy"] is False
    for _ in range(2):
        assert emprocess(capsys, "admin", "bucket", "set-private", url, "--yes")[0] == 0
        assert public_state(url) == private_state(scheme)


@pytest.mark.parametrize("scheme", BUCKETS)
def test_set_private_keeps_what_set_public_did_not_add(request, capsys, scheme):
    url = _server(request, scheme).new_bucket("viewed")
    bucket = storage.parse(url).bucket
    if scheme == "gs":
        from google.cloud import storage as gcs

        found = gcs.Client(project="emprocess-test").get_bucket(bucket)
        found.cors = [{"origin": ["https://lab.example"], "method": ["PUT"]}]
        found.patch()
    else:
        import boto3

        boto3.client("s3").put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [
            {"AllowedOrigins": ["https://lab.example"], "AllowedMethods": ["PUT"]}]})
    kept = public_state(url)["cors"]
    assert emprocess(capsys, "admin", "bucket", "set-public", url, "--yes")[0] == 0
    assert emprocess(capsys, "admin", "bucket", "set-private", url, "--yes")[0] == 0
    assert public_state(url)["cors"] == kept


@pytest.mark.parametrize("scheme", BUCKETS)
@pytest.mark.parametrize("command", ["set-public", "set-private"])
def test_public_access_dry_run_and_refusal_change_nothing(request, capsys, scheme, command):
    url = _server(request, scheme).new_bucket("viewed")
    before = public_state(url)
    code, out, _ = emprocess(capsys, "admin", "bucket", command, url, "--dry-run")
    assert code == 0 and out.startswith("would ") and url in out
    code, _, err = emprocess(capsys, "admin", "bucket", command, url)
    assert code == 2 and "--yes" in err
    assert public_state(url) == before


@pytest.mark.parametrize("scheme", BUCKETS)
@pytest.mark.parametrize("command", ["archive", "set-public", "set-private"])
def test_a_missing_bucket_is_an_error_naming_it(request, capsys, scheme, command):
    url = f"{scheme}://{_server(request, scheme).bucket_name('missing')}"
    code, _, err = emprocess(capsys, "admin", "bucket", command, url, "--yes")
    assert code == 2 and f"error: {url}: bucket does not exist" in err


@pytest.mark.parametrize("command", ["set-public", "set-private"])
def test_public_access_of_a_folder_or_a_path_is_refused(request, capsys, tmp_path, command):
    code, _, err = emprocess(capsys, "admin", "bucket", command, f"file://{tmp_path}", "--yes")
    assert code == 2 and "public access means nothing for a folder" in err
    url = request.getfixturevalue("s3_server").new_bucket("viewed")
    code, _, err = emprocess(capsys, "admin", "bucket", command, f"{url}/sub", "--yes")
    assert code == 2 and f"give {url} without a path" in err


# --- access denied ------------------------------------------------------------------------------------------------

GCS_DENIAL = json.dumps({"error": {"code": 403, "message": "caller does not have storage.buckets.get access",
                                   "errors": [{"message": "caller does not have storage.buckets.get access",
                                               "domain": "global", "reason": "forbidden"}]}}).encode()
S3_DENIAL = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied" \
            b"</Message><RequestId>0</RequestId></Error>"


@pytest.fixture(params=BUCKETS)
def denied_scheme(request, monkeypatch) -> str:
    """A stand-in for a real 403: neither emulator denies anything, so the cloud client is pointed at
    a local server that answers every request 403 in the real API's error format (GCS JSON, S3 XML)."""
    scheme = request.param
    _server(request, scheme)  # the session's environment (credentials, region) is set
    body, content_type = (GCS_DENIAL, "application/json") if scheme == "gs" else (S3_DENIAL, "application/xml")

    class Denying(BaseHTTPRequestHandler):
        def answer(self, with_body: bool = True) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(403)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = answer

        def do_HEAD(self) -> None:
            self.answer(with_body=False)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Denying)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST" if scheme == "gs" else "AWS_ENDPOINT_URL", endpoint)
    yield scheme
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", [["admin", "bucket", "delete"], ["admin", "bucket", "archive"],
                                     ["admin", "bucket", "set-public"], ["admin", "bucket", "set-private"],
                                     ["runs", "list"], ["runs", "delete", "r1", "--source"]])
def test_access_denied_is_an_error_naming_the_bucket(capsys, denied_scheme, command):
    """The runs commands name the first bucket they reach: the process bucket, or the run's ng bucket.
    S3 answers a HEAD without a body, so its message is then the status's ("Forbidden")."""
    source = f"{denied_scheme}://forbidden-bucket"
    code, _, err = emprocess(capsys, *command, source, *([] if command == ["runs", "list"] else ["--yes"]))
    assert code == 2
    assert re.match(rf"error: {re.escape(source)}\S*: access denied \(403\): \w", err), err
