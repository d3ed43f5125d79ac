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
