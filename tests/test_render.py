"""The docs' measured numbers are rendered from benchmarks/results/, between markers, never typed."""

from __future__ import annotations

import pytest

from benchmarks import render
from tests.conftest import run_cli


def test_a_block_is_rewritten_between_its_markers_and_nothing_else(monkeypatch):
    monkeypatch.setattr(render, "BLOCKS", {"numbers": ("DOC.md", lambda: "| a | 1 |")})
    text = "intro 0.5\n<!-- rendered: numbers -->\n| a | 0 |\nold line\n<!-- /rendered: numbers -->\noutro 0.7\n"
    assert render.render_doc(text, "DOC.md") == (
        "intro 0.5\n<!-- rendered: numbers -->\n| a | 1 |\n<!-- /rendered: numbers -->\noutro 0.7\n")
    assert render.render_doc(text, "OTHER.md") == text
    with pytest.raises(render.RenderError, match="DOC.md has no markers for block 'numbers'"):
        render.render_doc("intro\n", "DOC.md")


def test_the_docs_agree_with_the_result_files():
    result = run_cli("benchmarks.render", "--check", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_table_typed_outside_the_blocks_is_found_unless_marked_as_settings():
    text = ("<!-- rendered: numbers -->\n| a | b |\n| --- | --- |\n| 1 | 2 |\n<!-- /rendered: numbers -->\n\n"
            "| measured | s |\n| --- | --- |\n| x | 0.5 |\n\n"
            f"{render.NOT_MEASURED}\n| option | meaning |\n| --- | --- |\n| --x | y |\n")
    assert render.unmarked_tables(text) == ["| measured | s |"]


def test_a_result_file_without_provenance_is_named(tmp_path, monkeypatch):
    import json

    import pandas as pd

    monkeypatch.setattr(render, "RESULTS", tmp_path)
    monkeypatch.setattr(render, "ROOT", tmp_path)
    prov = {"commit": "a" * 40, "command": "python -m benchmarks.x"}
    (tmp_path / "good.json").write_text(json.dumps({"provenance": prov, "rows": []}))
    (tmp_path / "cases.json").write_text(json.dumps({"one": {"provenance": prov}, "two": {"provenance": {"commit": "b"}}}))
    (tmp_path / "bare.json").write_text(json.dumps({"rows": [1]}))
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "runs.parquet")
    (tmp_path / "table.md").write_text("| a |\n")
    assert render.result_problems() == [
        "bare.json has no provenance object",
        "cases.json entry 'two' has a provenance without command",
        "runs.parquet has no provenance object",
        "table.md is neither JSON nor Parquet (the docs are rendered from those by python -m benchmarks.render)"]


def test_the_publish_table_claims_only_where_the_paired_interval_excludes_0():
    from benchmarks import publish
    from benchmarks.tables.publish import claims

    rows = []
    for seed, (greedy, tpe, bohb) in enumerate([(0.040, 0.036, 0.030), (0.050, 0.046, 0.058), (0.045, 0.041, 0.044)]):
        for strategy, value in (("greedy", greedy), ("tpe", tpe), ("bohb", bohb)):
            rows.append({"family": "autoencoder", "seed": seed, "strategy": strategy, "budget": 1.0, "test_l1": value,
                         "epochs_spent": 60, "test_black_l1": 0.065})
    found = claims(rows)  # tpe is 0.004 below greedy on every seed; bohb goes both ways
    assert [family for family, _ in found] == ["autoencoder"] and found[0][1].startswith("`tpe` at 1B selects")
    table = publish.table(rows)
    assert "| autoencoder | tpe | 1B | 3 | 0.0410" in table and "-0.0040 ± 0.0000 **excludes 0** | 3/3 |" in table
    assert "| autoencoder | bohb |" in table and table.count("excludes 0") == 1


def test_the_recommendation_recommends_only_a_strategy_below_greedy(monkeypatch):
    from benchmarks.tables import publish as tables

    rows = []
    for seed, (greedy, tpe, pbt) in enumerate([(0.040, 0.036, 0.050), (0.050, 0.046, 0.061), (0.045, 0.041, 0.054)]):
        rows += [{"family": "autoencoder", "seed": seed, "strategy": strategy, "budget": 1.0, "test_l1": value,
                  "epochs_spent": 60, "test_black_l1": 0.065} for strategy, value in (("greedy", greedy), ("tpe", tpe))]
        rows += [{"family": "gan", "seed": seed, "strategy": strategy, "budget": 1.0, "test_l1": value,
                  "epochs_spent": 60, "test_black_l1": 0.065}
                 for strategy, value in (("greedy", greedy), ("pbt", pbt), ("tpe", greedy + (-1) ** seed * 0.001))]
    monkeypatch.setattr(tables, "_rows", lambda: rows)
    text = tables.recommendation()
    assert "- the autoencoder: recommended over greedy: `tpe` at 1B selects a configuration below" in text
    assert "- the gan: none is recommended over greedy: `pbt` at 1B selects a configuration above" in text
    assert "seeds below); `tpe` at 1B within its paired interval of greedy's." in text
    autoencoder = next(line for line in text.splitlines() if line.startswith("- the autoencoder: "))
    assert "interval of greedy's" not in autoencoder  # its only strategy is claimed
    assert "- population-based training does worse than greedy on the gan at 1B" in text
    assert "too few seeds" not in text
    # A strategy with one seed so far is named as such, not left out.
    rows.append({"family": "autoencoder", "seed": 0, "strategy": "bohb", "budget": 0.5, "test_l1": 0.03,
                 "epochs_spent": 30, "test_black_l1": 0.065})
    assert ("- too few seeds paired with greedy's for an interval yet: bohb at 0.5B on the autoencoder (1 seed)."
            in tables.recommendation())


def test_the_recommendation_says_whether_pbt_beats_greedy():
    from benchmarks.tables.publish import _population_verdict, _unmeasured

    rows = [{"family": "gan", "seed": seed, "strategy": strategy, "budget": 1.0, "test_l1": value, "epochs_spent": 60,
             "test_black_l1": 0.065}
            for seed, (greedy, pbt) in enumerate([(0.040, 0.043), (0.050, 0.046), (0.045, 0.047)])
            for strategy, value in (("greedy", greedy), ("pbt", pbt))]
    assert _population_verdict(rows) == ["- population-based training does not beat greedy on the gan at 1B: the "
                                         "paired difference +0.0003 ± 0.0094 includes 0 (1/3 seeds below greedy)."]
    assert "pbt on the gan at 0.5B" in _unmeasured(rows) and "tpe on the gan" in _unmeasured(rows)
    assert _population_verdict(rows[:2])[0].endswith("1 paired seed, no interval, so whether it beats greedy is "
                                                      "not known yet.")
    assert _population_verdict(rows[:0]) == ["- whether population-based training beats greedy is not known: it is "
                                             "not measured yet."]


def test_a_part_of_the_publish_plan_refuses_names_it_lacks():
    from benchmarks.publish import PLANS, part

    assert part(PLANS["full"], "gan", "pbt") == {"gan": ["greedy", "pbt"]}
    with pytest.raises(SystemExit, match="--strategies pbd: pbd not in the plan of gan, which has greedy, pbt, tpe"):
        part(PLANS["full"], "gan", "pbd")
    with pytest.raises(SystemExit, match="autoencodr not in the plan"):
        part(PLANS["full"], "gan,autoencodr", None)
