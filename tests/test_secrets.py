"""No credential from a location ever reaches a message: a run refused for one says so without
repeating it on stdout/stderr, in Airflow's task logs, in the failed task's error or in the mail.
(The services' answers and logs are checked in test_service_locations.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emprocess import storage
from emprocess.redact import redact

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(("text", "kept"), [
    (f"s3://AKIDEXAMPLE:{SECRET}@bucket/x", "s3://***@bucket/x"),
    (f"failed: 'gs://user:{SECRET}@bucket' refused", "failed: 'gs://***@bucket' refused"),
    (f"https://b.s3.amazonaws.com/k?X-Amz-Credential=AKID%2F1&X-Amz-Signature={SECRET}&x=1",
     "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&x=1"),
    (f"gs://b/k?access_token={SECRET}", "gs://b/k?access_token=***"),
    (f"https://storage.googleapis.com/b/k?X-Goog-Signature={SECRET}", "X-Goog-Signature=***"),
    ("gs://bucket/path and file:///data/x@2x.png stay", "gs://bucket/path and file:///data/x@2x.png stay"),
])
def test_redact_masks_credentials_and_keeps_the_rest(text, kept):
    assert SECRET not in redact(text) and kept in redact(text)


def spellings(tmp_path: Path) -> list[dict]:
    """Confs with a credential in a location: userinfo in the source, a signed URL's query in the
    watershed, a token in the agglomeration table."""
    base = {"id": "leaky", "image": "s%03d.png", "minz": 0, "maxz": 1, "source": f"file://{tmp_path}/src",
            "email": "ann@lab.example"}
    ws = f"file://{tmp_path}/ws"
    return [
        {**base, "source": f"s3://AKIDEXAMPLE:{SECRET}@em-bucket"},
        {**base, "segmentation": {"watershed": f"gs://em-ws/v?X-Goog-Signature={SECRET}"}},
        {**base, "segmentation": {"watershed": ws, "agglomeration": f"gs://em-ws/a.npy?access_token={SECRET}"}},
    ]


@pytest.mark.parametrize("case", range(3))
def test_the_cli_refuses_a_credential_without_repeating_it(tmp_path, case):
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(spellings(tmp_path)[case]))
    done = subprocess.run([sys.executable, "-m", "emprocess.cli", "run", str(conf)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert "invalid run conf" in done.stderr and "***" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_a_run_refused_in_airflow_keeps_the_credential_out_of_logs_errors_and_mail(
        airflow_db, tmp_path, monkeypatch, capfd, caplog, smtp_server):
    """Through Airflow (``dag.test``, whose task logs are this process's log records and output)."""
    from emprocess.workflow.dag_factory import build_dag
    from emprocess.workflow.local_run import run_dag_test

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_server.connection)
    dag = build_dag(1)
    before = len(smtp_server.messages)
    results = [run_dag_test(dag, conf) for conf in spellings(tmp_path)]
    for result in results:
        assert result.state == "failed"
        [(task, error)] = result.failed
        assert task == "validate" and "***" in error and SECRET not in error
    mails = smtp_server.messages[before:]
    assert len(mails) == len(results)
    for mail in mails:
        body = mail.get_body(("html", "plain")).get_content()
        assert "refused" in body and SECRET not in body and SECRET not in str(mail["Subject"])
    out, err = capfd.readouterr()
    assert "invalid run conf" in caplog.text + out + err and "task_id=validate" in caplog.text
    assert SECRET not in caplog.text + out + err
    assert not list(tmp_path.rglob("report.json"))  # a refused run writes nothing
    files = [p for p in [*Path(airflow_db).rglob("*"), *tmp_path.rglob("*")]
             if p.is_file() and not p.name.startswith("airflow.db")]  # the metadata DB keeps the conf as given
    assert not [str(p) for p in files if SECRET.encode() in p.read_bytes()]


def test_storage_refusals_name_the_location_without_its_credential():
    for url in (f"s3://AKID:{SECRET}@bucket/x", f"gs://bucket/x?X-Amz-Signature={SECRET}", f"gs://u:{SECRET}@b"):
        with pytest.raises(storage.StorageError) as refused:
            storage.parse(url)
        assert SECRET not in str(refused.value) and "***" in str(refused.value)


def test_log_handlers_mask_credentials(tmp_path):
    import logging

    from emprocess.redact import redact_logs

    handler = logging.FileHandler(tmp_path / "service.log")
    logger = logging.getLogger("emprocess.test.own-handler")
    logger.addHandler(handler)
    try:
        redact_logs()
        logger.warning("refused %s", f"s3://AKID:{SECRET}@bucket/x")
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert (tmp_path / "service.log").read_text() == "refused s3://***@bucket/x\n"
