"""The local viewer server answers Range requests with CORS, as neuroglancer needs for sharded volumes."""

import threading

import requests

from emprocess.serve import make_server


def test_range_requests_and_cors(tmp_path):
    data = bytes(range(256)) * 4
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "0.shard").write_bytes(data)
    server = make_server(str(tmp_path), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/vol/0.shard"
    try:
        part = requests.get(base, headers={"Range": "bytes=10-19", "Origin": "https://neuroglancer-demo.appspot.com"})
        suffix = requests.get(base, headers={"Range": "bytes=-16"})
        whole = requests.get(base)
        outside = requests.get(base, headers={"Range": "bytes=5000-"})
        preflight = requests.options(base, headers={"Access-Control-Request-Headers": "range"})
    finally:
        server.shutdown()
        server.server_close()
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert part.headers["Access-Control-Allow-Origin"] == "*"
    assert suffix.status_code == 206 and suffix.content == data[-16:]
    assert whole.status_code == 200 and whole.content == data
    assert outside.status_code == 416
    assert preflight.status_code == 204 and "Range" in preflight.headers["Access-Control-Allow-Headers"]
