"""The bad-input catalogue through ``emprocess run``: every case is refused with exit status 2 and a
message naming the problem, without a traceback, and leaves nothing beside the source (no run
location is made). ``benchmarks/refusals.py`` prints how long each took to refuse; here a store that
does not answer is given up on after ``PROBE_TIMEOUT`` seconds, not the default's ``PROBE_SECONDS``."""

from __future__ import annotations

import pytest
from support.refusals import refuse, spoiled
from support.refusals.catalogue import CATALOGUE

PROBE_TIMEOUT = "2"


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.name for case in CATALOGUE])
def test_each_bad_input_is_refused_before_any_write_naming_the_problem(case, tmp_path_factory):
    root, conf_dir = tmp_path_factory.mktemp("input"), tmp_path_factory.mktemp("conf")
    env = {"EMPROCESS_PROBE_TIMEOUT": PROBE_TIMEOUT, **case.environment()}
    refusal = refuse(spoiled(case, root), root, conf_dir, case.argv, env)
    assert refusal.status == 2, refusal.message
    assert "Traceback" not in refusal.message
    for expected in case.expected:
        assert expected in refusal.message, f"{case.name}: {expected!r} not in {refusal.message!r}"
    assert not refusal.new_files, f"{case.name}: written before the refusal: {sorted(refusal.new_files)}"
