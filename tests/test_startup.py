"""The command answers --help, and refuses a bad option or study file, before it imports anything heavy: the
registries name their plug-ins without importing them (models.registry), and the driver is imported once the
options pass (search/run.py). ``python -m benchmarks.startup`` times it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "ray", "optuna", "pandas", "mlflow")
PROBE = """
import contextlib, io, json, sys
from search.run import main
err = io.StringIO()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    try:
        code = main(json.loads(sys.argv[1]))
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "said": err.getvalue(), "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _answer(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("argv, said", [
    (["--help"], ""),
    (["--strategy", "nope", "--model", "gan"], "unknown --strategy 'nope'"),
    (["--strategy", "greedy", "--model", "unet", "--epochs", "0"], "--epochs must be a positive whole number"),
    (["--strategy", "pbt", "--model", "autoencoder"], "has no [pbt] perturb list"),
    (["--strategy", "tpe", "--model", "gan", "--space", "BAD"], "map_loss 'l1x' is not one of l1, ce, l1+ce"),
], ids=["help", "strategy", "epochs", "pbt-space", "misspelled-value"])
def test_answers_without_importing_torch_ray_or_optuna(argv, said, tmp_path):
    if "BAD" in argv:  # a misspelled value in a list that is not the default one
        text = (ROOT / "studies" / "gan.toml").read_text()
        bad = tmp_path / "gan.toml"
        bad.write_text(text.replace('[params.map_loss]\nvalues = ["l1+ce", "l1"]', '[params.map_loss]\nvalues = ["l1+ce", "l1x"]'))
        argv = [str(bad) if a == "BAD" else a for a in argv]
    answer = _answer(argv)
    assert answer["code"] == (0 if argv == ["--help"] else 2) and said in answer["said"], answer
    assert answer["heavy"] == [], f"{answer['heavy']} imported to answer {argv}"


def test_the_command_line_and_search_options_agree():
    """Every option the command parses is a SearchOptions field (or a strategy's own option), with the same
    default, and every SearchOptions field but the strategy's own options dict is an option of the command."""
    import argparse
    from dataclasses import MISSING, fields

    from search.run import build_parser
    from search.runner.options import SearchOptions
    from search.strategies import STRATEGIES

    own = {option.dest for _, strategy in STRATEGIES.items() for option in strategy.options}
    parsed = {a.dest: a for a in build_parser()._actions if not isinstance(a, argparse._HelpAction)}
    declared = {f.name: f for f in fields(SearchOptions) if f.name != "strategy_options"}
    assert set(parsed) - own == set(declared), (set(parsed) - own) ^ set(declared)
    for name, item in declared.items():
        if item.default is MISSING:
            assert parsed[name].required, name
        else:
            assert parsed[name].default == item.default, (name, parsed[name].default, item.default)
    for name in own:
        assert parsed[name].default is argparse.SUPPRESS, name  # its strategy's default, read through SearchOptions


TAG_PROBE = """
import json, sys
from ray.air._internal import usage
from ray.air.integrations.mlflow import MLflowLoggerCallback  # Ray's own count, for the comparison below
from ray.tune import Callback
from ray.tune.logger import LoggerCallback
from ray.tune.logger.json import JsonLoggerCallback

class Mine(Callback): pass
class MyLogger(LoggerCallback): pass
callbacks = [Mine(), MyLogger(), JsonLoggerCallback(), MLflowLoggerCallback(), object()]
ray_counts = dict(usage._count_callbacks(callbacks))
if sys.argv[1] == "mended":
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith(("mlflow.", "ray.air.integrations."))]:
        del sys.modules[name]  # as in a driver that never imported them
    from search.runner.ray_fixes import name_callbacks_without_importing
    assert name_callbacks_without_importing()
    usage.tag_callbacks(callbacks[:3])
    print(json.dumps({"imported": "mlflow" in sys.modules, "counts": dict(usage._count_callbacks(callbacks)),
                      "ray_counts": ray_counts}))
"""


def test_a_tuner_fit_does_not_import_mlflow_to_name_its_callbacks():
    """Ray Tune's callback usage tag imported mlflow (through Ray's MLflow integration) in every Tuner.fit; the mend in
    search/runner/ray_fixes.py counts the same callbacks under the same names without that import."""
    pytest.importorskip("mlflow")
    done = subprocess.run([sys.executable, "-c", TAG_PROBE, "mended"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["imported"] is False
    assert answer["counts"] == answer["ray_counts"] == {"CustomCallback": 1, "CustomLoggerCallback": 1,
                                                        "JsonLoggerCallback": 1, "MLflowLoggerCallback": 1}


HANG_UP_PROBE = """
import contextlib, io, signal, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[1] == "nohup" else signal.SIG_DFL)  # the tests may run under nohup
from search.run import _interrupt, main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    main(["--strategy", "nope", "--model", "gan"])
print({signal.SIG_IGN: "ignored", _interrupt: "interrupts"}.get(signal.getsignal(signal.SIGHUP), "other"))
"""


@pytest.mark.parametrize("how, then", [("terminal", "interrupts"), ("nohup", "ignored")])
def test_a_hang_up_stops_the_search_as_sigterm_does_except_under_nohup(how, then):
    """A dropped SSH session's SIGHUP is an interrupt (everything saved, Ray shut down, exit 130; tests/test_search.py
    sends one mid-search); a search started under nohup keeps ignoring it."""
    done = subprocess.run([sys.executable, "-c", HANG_UP_PROBE, how], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.split() == [then], done.stdout + done.stderr
