"""Study files: the shipped ones parse, and every malformed one is refused clearly."""

from __future__ import annotations

import pytest

from search.space import STUDIES_DIR, StudyFileError
from search.study_file import load_space, parse_space
from tests.conftest import assert_clean_error, run_cli


@pytest.mark.parametrize("family", ["autoencoder", "gan", "diffusion"])
def test_shipped_study_files_hold_the_reports_space(family):
    space = load_space(family)
    defaults = space.defaults()
    width = "g_width" if family == "gan" else "width"
    assert space.choice(width, defaults).values == (32, 50, 64, 100)
    assert defaults[width] == 64
    opt = "g_optimizer" if family == "gan" else "optimizer"
    lr = "g_lr" if family == "gan" else "lr"
    assert defaults[opt] == "adam" and defaults[lr] == 0.001
    sgd = space.with_value(defaults, opt, "sgd")
    assert space.choice(lr, sgd).values == (0.005, 0.01, 0.02) and sgd[lr] == 0.01
    beta = "g_beta1" if family == "gan" else "beta1"
    assert beta in defaults and beta not in sgd  # Adam's betas exist only with Adam
    assert space.choice(beta, defaults).values == (0.9, 0.0, 0.5)


def test_canonical_maps_optuna_names_back():
    space = load_space("autoencoder")
    config = space.canonical({"map_loss": "l1", "p_translation": 0.0, "norm": "instance", "width": 32, "dropout": 0.2,
                              "weight_decay": 0.0, "optimizer": "sgd", "lr@sgd": 0.03, "batch_size": 8})
    assert config == {"map_loss": "l1", "p_translation": 0.0, "norm": "instance", "width": 32, "dropout": 0.2,
                      "weight_decay": 0.0, "optimizer": "sgd", "lr": 0.03, "batch_size": 8}


BASE = {
    "family": "autoencoder",
    "order": ["norm", "optimizer", "lr"],
    "params": {
        "norm": {"values": ["batch", "instance"], "default": "batch"},
        "optimizer": {"values": ["adam", "sgd"], "default": "adam"},
        "lr": {"depends_on": "optimizer", "cases": {"adam": {"values": [0.001], "default": 0.001},
                                                     "sgd": {"values": [0.01], "default": 0.01}}},
    },
}


def _mutate(path, value):
    import copy

    raw = copy.deepcopy(BASE)
    target = raw
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return raw


@pytest.mark.parametrize("path, value, needle", [
    (["params", "colour"], {"values": [1], "default": 1}, "not in order"),
    (["order"], ["norm", "optimizer", "lr", "colour"], "no [params] table"),
    (["params", "norm", "default"], "group", "not among its values"),
    (["params", "norm", "values"], [], "non-empty list"),
    (["params", "norm", "valuez"], ["x"], "unknown keys"),
    (["params", "norm", "values"], ["batch", 3], "is not a str"),
    (["params", "lr", "cases"], {"adam": {"values": [0.001], "default": 0.001}}, "missing cases"),
    (["order"], ["norm", "lr", "optimizer"], "earlier in 'order'"),
    (["family"], "vae", "'family' must be one of"),
    (["params", "norm", "default"], KeyError, "'default' is missing"),
    # a value a search would try that no optimizer takes: refused here, not as an errored trial
    (["params", "lr", "cases", "sgd", "values"], [0.01, -0.1], "params.lr.cases.sgd: -0.1 is not a valid value"),
])
def test_malformed_study_files_are_refused(path, value, needle):
    parse_space(BASE)  # the base is valid
    with pytest.raises(StudyFileError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_space(_mutate(path, value))


@pytest.mark.parametrize("name, table, needle", [
    ("width", {"values": [64, 0], "default": 64}, "params.width: 0 is not a valid value (width must be in [1, inf)"),
    ("dropout", {"values": [0.0], "default": 0.0, "range": [0.0, 1.5]}, "params.dropout: 1.5 is not a valid value"),
    ("batch_size", {"values": [16], "default": 16, "range": [7.5, 32.9]}, "must be whole numbers"),
    ("dropout", {"values": [0.0], "default": 0.0, "range": ["0", "0.5"]}, "two finite numbers"),
    ("weight_decay", {"values": [0.001], "default": 0.001, "range": [1e-5, 1e-2], "log": "false"},
     "'log' must be true or false"),
])
def test_values_and_ranges_no_network_takes_are_refused(name, table, needle):
    """In any list, at either end of a range: a search would try them, and each would error inside a Ray worker."""
    raw = _mutate(["params", name], table)
    raw["order"] = [*raw["order"], name]
    with pytest.raises(StudyFileError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_space(raw)


def test_a_ranged_parameter_others_depend_on_is_checked_by_its_values():
    """Its range's ends are no case of its dependents: they are not made into configs (a KeyError before)."""
    raw = _mutate(["params", "batch_size"], {"values": [16, 32], "default": 16, "range": [8, 64]})
    raw["params"]["lr"] = {"depends_on": "batch_size", "cases": {"16": {"values": [0.001], "default": 0.001},
                                                                 "32": {"values": [0.002], "default": 0.002}}}
    raw["order"] = ["norm", "optimizer", "batch_size", "lr"]
    assert parse_space(raw).choice("lr", {"batch_size": 32}).values == (0.002,)


def test_a_parameter_whose_parent_is_fixed_says_how_to_fix_it():
    raw = _mutate(["fixed"], {"optimizer": "sgd"})
    del raw["params"]["optimizer"]
    raw["order"] = ["norm", "lr"]
    with pytest.raises(StudyFileError, match="fixed to 'sgd' in \\[fixed\\]: give params.lr the values"):
        parse_space(raw)


def test_unknown_parameter_name_is_refused():
    raw = _mutate(["params", "colour"], {"values": [1], "default": 1})
    raw["order"] = raw["order"] + ["colour"]
    with pytest.raises(StudyFileError, match="unknown parameter 'colour'"):
        parse_space(raw)


def test_cli_refuses_a_bad_study_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((STUDIES_DIR / "autoencoder.toml").read_text().replace("default = 64", "default = 65"))
    result = run_cli("search.run", "--strategy", "greedy", "--model", "autoencoder", "--space", str(bad),
                     "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert_clean_error(result, "not among its values")
    broken = tmp_path / "broken.toml"
    broken.write_text("family = [")
    result = run_cli("search.run", "--strategy", "greedy", "--model", "autoencoder", "--space", str(broken),
                     "--runs-dir", str(tmp_path / "runs"), timeout=60)
    assert_clean_error(result, "not valid TOML")


def _changed(space_text: str) -> str:
    """The autoencoder's study file with one default changed: another space, another fingerprint."""
    return space_text.replace('[params.batch_size]\nvalues = [8, 16, 32]\ndefault = 16',
                              '[params.batch_size]\nvalues = [8, 16, 32]\ndefault = 8')


def test_a_study_keeps_the_space_it_was_made_with_when_the_study_file_changes(tmp_path):
    import tomllib

    from search.study_file import load_space, parse_space, recorded_space

    current = load_space("autoencoder")
    before_text = _changed(current.text)
    assert before_text != current.text
    before = parse_space(tomllib.loads(before_text), "before.toml")
    before.text = before_text
    record = {"study": "s", "family": "autoencoder", "space_fingerprint": before.fingerprint, **before.record()}
    space, note = recorded_space(record, current, explicit=False, history=tmp_path)
    assert space.fingerprint == before.fingerprint and space.defaults()["batch_size"] == 8
    assert note.startswith("study s: the study file") and "continues with the space it was made with" in note
    # A study file named with --space is never replaced: the identity check refuses it, as before.
    assert recorded_space(record, current, explicit=True, history=tmp_path) == (current, None)
    # A study made before spaces were recorded: the earlier study file, kept under its fingerprint.
    legacy = {"study": "s", "family": "autoencoder", "space_fingerprint": before.fingerprint}
    assert recorded_space(legacy, current, explicit=False, history=tmp_path) == (current, None)  # not kept: refused
    (tmp_path / f"autoencoder-{before.fingerprint}.toml").write_text(before_text)
    space, note = recorded_space(legacy, current, explicit=False, history=tmp_path)
    assert space.fingerprint == before.fingerprint and str(tmp_path) in note
    # The same space: nothing to say; another model's study: not this space's to replace (refused by the identity check).
    assert recorded_space({**record, "space_fingerprint": current.fingerprint}, current, explicit=False) == (current, None)
    assert recorded_space({**record, "family": "gan"}, current, explicit=False, history=tmp_path) == (current, None)
