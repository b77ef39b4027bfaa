"""The run-ended mail: who gets it, what it says, and that nothing in it comes unescaped from the conf.
(The end-to-end tests send it through Airflow to a real SMTP server.)"""

from __future__ import annotations

import pytest

from emprocess import storage
from emprocess.config import ConfError, parse_conf
from emprocess.lifecycle import create_env, publish
from emprocess.notify import recipient, run_ended_mail
from emprocess.stages import RunContext

RUN_ID = "manual__2026-12-01T10:00:00+00:00"


def conf_for(tmp_path, **keys) -> dict:
    return {"id": "fly", "image": "s%03d.png", "minz": 0, "maxz": 3, "source": f"file://{tmp_path}/src", **keys}


def test_no_address_means_no_mail(tmp_path):
    assert run_ended_mail(conf_for(tmp_path), RUN_ID, [], 0) is None
    assert recipient({"email": ["a@b.org"]}) is None and recipient("not a conf") is None


@pytest.mark.parametrize("address", ["ann@lab.org", "a.b+em@sub.lab.example"])
def test_a_conf_takes_one_address(tmp_path, address):
    assert parse_conf(conf_for(tmp_path, email=address)).email == address


@pytest.mark.parametrize("address", ["ann", "ann@lab", "ann@lab.org, bob@lab.org", "Ann <ann@lab.org>", "a b@c.org"])
def test_a_conf_refuses_what_is_not_one_address(tmp_path, address):
    with pytest.raises(ConfError, match="'email'"):
        parse_conf(conf_for(tmp_path, email=address))


def test_a_finished_run_mails_its_report_and_outputs(tmp_path):
    conf = conf_for(tmp_path, email="ann@lab.org")
    ctx = RunContext.create(conf, RUN_ID)
    create_env(ctx)
    publish(ctx)
    report = storage.join(ctx.locations.process, "report.html")
    storage.write(report, b"<html></html>")
    mail = run_ended_mail(conf, RUN_ID, [], 0)
    assert mail.to == "ann@lab.org"
    assert mail.subject == f"emprocess: fly run {RUN_ID} succeeded"
    for url in (report, ctx.locations.jpeg, ctx.locations.raw):
        assert url in mail.html
    assert "Failed" not in mail.html


def test_a_failed_run_names_its_failed_workers_and_points_at_what_it_wrote(tmp_path):
    conf = conf_for(tmp_path, email="ann@lab.org")
    ctx = RunContext.create(conf, RUN_ID)
    create_env(ctx)
    mail = run_ended_mail(conf, RUN_ID, ["pyramid.shard[3]", "pyramid.shard[7]"], 5)
    assert mail.subject.endswith(" failed")
    assert "<li>pyramid.shard[3]</li><li>pyramid.shard[7]</li>" in mail.html
    assert "5 later tasks did not run" in mail.html
    assert ctx.locations.process in mail.html and "report.html" not in mail.html
    assert ctx.locations.jpeg not in mail.html  # no output is claimed before publish recorded it


def test_a_refused_conf_is_still_reported_to_its_address(tmp_path):
    conf = conf_for(tmp_path, email="ann@lab.org", source="ftp://nowhere")
    mail = run_ended_mail(conf, RUN_ID, ["validate"], 12)
    assert "<li>validate</li>" in mail.html and "The run conf was refused" in mail.html and "ftp" in mail.html


def test_everything_from_the_conf_is_escaped(tmp_path):
    conf = conf_for(tmp_path, email="ann@lab.org", id="<b>fly</b>", source="ftp://<script>")
    mail = run_ended_mail(conf, RUN_ID, ["validate"], 0)
    assert "<b>fly</b>" not in mail.html and "&lt;b&gt;fly&lt;/b&gt;" in mail.html
    assert "<script>" not in mail.html and "&lt;script&gt;" in mail.html


def test_the_subject_stays_one_header_line(tmp_path):
    conf = conf_for(tmp_path, email="ann@lab.org", id="fly\r\nBcc: eve@evil.example")
    assert run_ended_mail(conf, RUN_ID, [], 0).subject == f"emprocess: fly Bcc: eve@evil.example run {RUN_ID} succeeded"
