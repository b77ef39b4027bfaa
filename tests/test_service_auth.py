"""Cloud Run ID tokens: google-auth's real service-account flow against a token endpoint on 127.0.0.1.

The endpoint plays Google's OAuth token URI: it checks the signed assertion names the audience and
answers an ID token with the expiry the test chose. The service it authorizes records each call's
Authorization header.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt
from support.json_replies import send_json

from emprocess.workflow.service_client import IdTokenAuth, ServiceClient

AUDIENCE = "https://emwrite-test.a.run.app"


@contextmanager
def http_server(handle_post) -> Iterator[str]:
    """An HTTP server on a free 127.0.0.1 port answering POSTs with ``handle_post(path, headers, body)``
    → (status, JSON value)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            send_json(self, *handle_post(self.path, self.headers, body))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def token_endpoint(tmp_path, monkeypatch):
    """A service-account key file whose token URI is a local endpoint; yields the endpoint's state:
    ``lifetime`` (s) of the tokens it issues and the ``issued`` tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    signer = crypt.RSASigner.from_string(pem, key_id="k1")
    state = {"lifetime": 3600, "issued": [], "audiences": []}

    def issue(path, headers, body):
        form = parse_qs(body.decode())
        claims = jwt.decode(form["assertion"][0], verify=False)
        state["audiences"].append(claims.get("target_audience"))
        now = int(time.time())
        token = jwt.encode(signer, {"aud": claims.get("target_audience"), "iat": now,
                                    "exp": now + state["lifetime"], "n": len(state["issued"])}).decode()
        state["issued"].append(token)
        return 200, {"id_token": token}

    with http_server(issue) as url:
        key_file = tmp_path / "service-account.json"
        key_file.write_text(json.dumps({
            "type": "service_account", "project_id": "emprocess-test", "private_key_id": "k1",
            "private_key": pem, "client_email": "airflow@emprocess-test.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": url + "/token"}))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        yield state


def test_a_token_is_fetched_for_the_audience_and_reused_until_near_expiry(token_endpoint):
    auth = IdTokenAuth(audience=AUDIENCE)
    first = auth.header()
    assert first == {"Authorization": f"Bearer {token_endpoint['issued'][0]}"}
    assert auth.header() == first and len(token_endpoint["issued"]) == 1
    assert token_endpoint["audiences"] == [AUDIENCE]


def test_a_token_about_to_expire_is_refreshed(token_endpoint):
    token_endpoint["lifetime"] = 120  # inside the 300 s refresh margin
    auth = IdTokenAuth(audience=AUDIENCE)
    tokens = {auth.header()["Authorization"] for _ in range(3)}
    assert len(tokens) == 3 and len(token_endpoint["issued"]) == 3


def test_every_call_to_the_service_carries_the_token(token_endpoint):
    seen = []

    def service(path, headers, body):
        seen.append((path, headers.get("Authorization")))
        return 200, {"done": json.loads(body)["key"]}

    with http_server(service) as url:
        client = ServiceClient(url, auth=IdTokenAuth(audience=AUDIENCE))
        assert [client.post("/ngshard", {"key": k})["done"] for k in range(3)] == [0, 1, 2]
    assert seen == [("/ngshard", f"Bearer {token_endpoint['issued'][0]}")] * 3
