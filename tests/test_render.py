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
