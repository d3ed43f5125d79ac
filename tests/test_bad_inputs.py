"""Bad input, as a user gives it (benchmarks/bad_inputs.py lists the cases, rendered in docs/reliability.md): each is
refused with one line starting ``error:``, exit 2, no traceback, and not a file of the runs folder touched, before
anything starts (a runs folder holding a finished study, for the cases about one)."""

from __future__ import annotations

import pytest

from benchmarks.bad_inputs import CASES, make_finished_study, passed, run_case


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    make_finished_study(runs)
    return runs


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}: {c.what}" for c in CASES])
def test_a_bad_input_gets_one_line_exit_2_and_nothing_written(case, runs, tmp_path):
    row = run_case(case, runs, tmp_path)
    assert passed(row), row
