"""Reference tables generated from the code itself, not from result files: the command's options (from its
argument parser), the strategies (from their registry) and the Parquet schema (from the results store's columns
and the registered plug-ins'). ``python -m benchmarks.render --check`` fails when the docs and the code disagree."""

from __future__ import annotations

import argparse


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def options_table() -> str:
    """Every option of ``python -m search.run``, grouped as ``--help`` groups them, with its default and help."""
    from search.run import build_parser, shows_default

    parser = build_parser()
    lines = []
    for group in parser._action_groups:  # argparse keeps the groups in this private list (no public accessor)
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = "common options" if group.title in ("options", "optional arguments") else group.title
        lines += ["", f"**{title}**", "", "| option | default | meaning |", "| --- | --- | --- |"]
        for action in actions:
            flags = ", ".join(f"`{flag}`" + (f" `{action.metavar or action.dest.upper()}`" if action.nargs != 0 else "")
                              for flag in action.option_strings)
            default = "required" if action.required else f"`{action.default}`" if shows_default(action) else ""
            lines.append(f"| {flags} | {default} | {_cell(action.help or '')} |")
    return ("Generated from the command's argument parser (`search/run.py` and each strategy's `options`) by "
            "`python -m benchmarks.render`; `python -m search.run --help` prints the same.\n" + "\n".join(lines))


def strategies_table() -> str:
    """The strategies in their registry, each with its summary and the options it brings."""
    from search.strategies import STRATEGIES

    lines = ["| strategy | what it is | its own options |", "| --- | --- | --- |"]
    for name, strategy in STRATEGIES.items():
        own = ", ".join(f"`{option.flag}`" for option in strategy.options) or ""
        lines.append(f"| `{name}` | {_cell(strategy.summary)} | {own} |")
    return "Generated from `search/strategies/__init__.py`'s registry by `python -m benchmarks.render`.\n\n" \
        + "\n".join(lines)


def _schema(columns: list[tuple[str, object]], meanings: dict[str, str]) -> list[str]:
    lines = ["| column | type | meaning |", "| --- | --- | --- |"]
    for name, kind in columns:
        lines.append(f"| `{name}` | {kind} | {_cell(meanings.get(name, ''))} |")
    return lines


def schema_table() -> str:
    """trials.parquet's and epochs.parquet's columns: the store's own, each strategy's and each family's."""
    from search.store import results
    from search.strategies import STRATEGIES
    from trainables.families import CARDS

    meanings = dict(results.MEANINGS)
    strategy_columns: list[tuple[str, object]] = []
    for name, strategy in STRATEGIES.items():
        for column, kind in strategy.columns.items():
            strategy_columns.append((column, results.HP_TYPES[kind]))
            meanings[column] = f"{name} only: " + strategy.column_meanings.get(column, "")
    for card in CARDS.values():
        for metric, meaning in card.metric_meanings.items():
            meanings.setdefault(metric, meaning)
    trial_columns = (results.TRIAL_COLUMNS + strategy_columns + results.TRIAL_COLUMNS_AFTER
                     + [("hp_<name>", "int64, double, string or bool")])
    lines = [f"Schema version {results.SCHEMA_VERSION} (the `schema_version` column), generated from "
             "`search/store/results.py`, each strategy's `columns` and each family's `metrics` by "
             "`python -m benchmarks.render`.", "", "`trials.parquet`, one row per trial:", ""]
    lines += _schema(trial_columns, meanings)
    lines += ["", "`epochs.parquet`, one row per trial per reported epoch (a metric a family does not report is "
              "null):", ""]
    lines += _schema(results.epoch_columns(), meanings)
    return "\n".join(lines)
