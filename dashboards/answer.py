"""The numbers first: the answer (the configuration to use and its test L1 over seeds), the studies'
summary table, the final stage's intervals, and the L1 of every trial beside the baselines."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.study import (Study, baseline_legend, baseline_lines, distinct_baselines, empty, figure_html,
                              finished)
from search.runner.console import cut
from search.runner.baseline import better_baseline, recommended, study_verdict
from search.runner.final import FINAL_TABLE, every_run_errored


def _channel_cell(done: pd.DataFrame, base: dict[str, Any], channel: str) -> str:
    """The best trial's L1 on one channel, beside the all-black map's on the same channel."""
    column = f"best_val_l1_{channel}"
    black = base.get(f"black_l1_{channel}")
    if done.empty or column not in done or black is None:
        return "-"
    value = done.iloc[0][column]
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.4f} (black {black:.4f})"


def _config_text(study: Study, trial_id: str) -> str:
    row = study.trials[study.trials["trial_id"] == trial_id]
    if row.empty:
        return trial_id
    values = row.iloc[0]
    return " ".join(f"{c[3:]}={values[c]:g}" if isinstance(values[c], float) else f"{c[3:]}={values[c]}"
                    for c in study.hp_columns if pd.notna(values[c]))


def _without_final(study: Study, final: dict[str, Any]) -> list[str]:
    """The answer's cells of a study without final-stage numbers: the search's best single run, said to be optimistic,
    and why there are no test numbers (the stage has not run, or every one of its runs errored)."""
    done = finished(study)
    if done.empty:
        statuses = study.trials["status"]
        if len(statuses) and (statuses == "errored").all():
            return ["-", f"every trial errored ({len(statuses)} of {len(statuses)}; each one's error is in "
                    "trials.parquet's error column): fix its cause and re-run the search command", "-", "-", "-"]
        return ["-", "no trial has finished yet", "-", "-", "-"]
    best = done.iloc[0]
    base = study.meta.get("baselines", {})
    lost = every_run_errored(final)
    if lost:
        why = (f"no test numbers: every final-stage run errored ({final['runs']} of {final['runs']}; the first one's "
               f"error ends: {cut(lost)}); once its cause is fixed, re-run the search command")
    else:
        why = "no test numbers: the final stage has not run (re-run the search command, or drop --final-top-k 0)"
    return [_config_text(study, best["trial_id"]), why, "-",
            f"val L1 {best['best_val_l1']:.4f} (one run, selected on the same val: optimistic)",
            f"all-black {base.get('black_l1', float('nan')):.4f}, mean map {base.get('mean_map_l1', float('nan')):.4f}"]


def section_answer(studies: list[Study]) -> str:
    """The answer first: per study, the configuration to use and its numbers to publish.

    With a final stage, the configuration whose re-trainings have the lowest mean *val* L1
    (selection never looks at test), its test L1 with the seeds' 95% interval beside the test
    baselines, overall and per channel. Without one, the search's best single run on val,
    said to be optimistic.
    """
    rows, beaten = [], []
    for study in studies:
        summary = study.store.read_summary() or {}
        final = summary.get("final") or {}
        chosen = recommended(final)
        verdict = study_verdict(summary)
        cells: list[str]
        if chosen is not None:
            split = "test" if final.get("has_test") else "val"
            base = final.get("test_baselines") if split == "test" else study.meta.get("baselines", {})
            main = chosen.get(f"{split}_l1") if split == "test" else chosen["val_l1"]

            def stat(key: str, black_key: str) -> str:
                value = chosen.get(key) or {}
                if value.get("mean") is None:
                    return "-"
                ratio = f" ({value['mean'] / base[black_key]:.2f}x all-black)" if base and base.get(black_key) else ""
                return f"{value['mean']:.4f} ± {value.get('ci95') or 0:.4f}{ratio}"

            cells = [
                _config_text(study, chosen["source_trial_id"]),
                f"{split} L1 " + stat(f"{split}_l1", "black_l1") + f", {main.get('n', 0)} seeds",
                stat(f"{split}_l1_remembered", "black_l1_remembered") + " / "
                + stat(f"{split}_l1_falsely_remembered", "black_l1_falsely_remembered"),
                f"val L1 {chosen['val_l1']['mean']:.4f} ± {chosen['val_l1'].get('ci95') or 0:.4f}",
                f"all-black {base.get('black_l1', float('nan')):.4f}, mean map {base.get('mean_map_l1', float('nan')):.4f}"
                + ("" if split == "test" else " (no test split: validation numbers, optimistic)"),
            ]
        else:
            cells = _without_final(study, final)
        if verdict is False:  # the trivial map is the answer: say so where the recommendation was
            name = better_baseline(final.get("test_baselines") or study.meta.get("baselines", {}))[0]
            beaten.append(f"No configuration beats {name} on this data in study {study.label}")
            cells[0] = f"no configuration beats {name} on this data (the best found: {cells[0]})"
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in [study.label, *cells]) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in ("study", "configuration to use", "headline (mean ± 95% interval)",
                                               "remembered / falsely remembered", "validation", "baselines on the same split"))
    warning = "".join(f'<p class="warning">{html.escape(line)}: that trivial map does as well. Try '
                      "more data, a smaller model or stronger regularisation (docs/data.md, 'When nothing beats the "
                      "baseline').</p>" for line in beaten)
    return (warning + f'<table class="answer"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            + ANSWER_LEGEND + splits_legend(studies))


ANSWER_LEGEND = ('<p class="legend">The configuration is the re-trained one with the lowest mean val L1 (selection uses '
                 'validation only); the headline is its test L1 over the seeds, read once. The evidence follows.</p>')


def splits_legend(studies: list[Study]) -> str:
    """Which split played which role in each study (study.json's ``splits``, from the data's layout)."""
    lines = [f"{study.label}: {study.meta['splits']['roles']}." for study in studies
             if (study.meta.get("splits") or {}).get("roles")]
    return "".join(f'<p class="legend">Splits of {html.escape(line)}</p>' for line in lines)


def section_summary(studies: list[Study]) -> str:
    rows = []
    for study in studies:
        t = study.trials
        counts = t["status"].value_counts().to_dict() if not t.empty else {}
        done = finished(study)
        best = f"{done['best_val_l1'].min():.4f}" if not done.empty else "-"
        base = study.meta.get("baselines", {})
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            study.name, study.meta.get("strategy"), study.meta.get("family"), study.meta.get("preset", ""),
            len(t), ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), best,
            f"{base.get('black_l1', float('nan')):.4f}", f"{base.get('mean_map_l1', float('nan')):.4f}",
            _channel_cell(done, base, "remembered"), _channel_cell(done, base, "falsely_remembered"))) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in ("study", "strategy", "family", "preset", "trials", "by status",
                                               "best val L1", "all-black L1", "mean-map L1",
                                               "best: remembered (red) L1", "best: falsely remembered (green) L1"))
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def section_final(studies: list[Study]) -> str:
    """The numbers to publish: the re-trained top configurations, mean and 95% interval over seeds, beside
    the baselines on the same split (search.runner.final)."""
    from search.runner.final import interval

    fig = go.Figure()
    measured, notes = [], []
    for study in studies:
        table = study.store.read_table(FINAL_TABLE)
        if table is None:
            continue
        rows = table.to_pandas()
        final = (study.store.read_summary() or {}).get("final")
        has_test = final.get("has_test") if final and "has_test" in final else bool(rows["test_l1"].notna().any())
        if not has_test:
            notes.append(f"{html.escape(study.label)} has no test split: its bars are validation numbers (optimistic).")
        for split, column, colour in (("test", "test_l1", "#d62728"), ("val", "selected_val_l1", "#1f77b4")):
            if split == "test" and not has_test:
                continue
            labels, means, errors = [], [], []
            for rank, group in rows.groupby("rank", sort=True):
                stat = interval(list(group[column]))
                if stat["mean"] is None:
                    continue
                labels.append(f"{study.name} #{rank} ({group['source_trial_id'].iloc[0]})")
                means.append(stat["mean"])
                errors.append(stat["ci95"] or 0.0)
            fig.add_trace(go.Scatter(
                x=labels, y=means, mode="markers", name=f"{study.name}: {split} L1",
                marker=dict(size=11, color=colour, symbol="diamond" if split == "test" else "circle"),
                error_y=dict(type="data", array=errors, visible=True),
                hovertemplate=f"{split} L1 %{{y:.4f}} ± %{{error_y.array:.4f}} (95%, {rows['seed'].nunique()} seeds)<extra></extra>"))
        measured.append((study, (final or {}).get("test_baselines") if has_test else study.meta.get("baselines"),
                         " (test)" if has_test else " (val)"))
    if not fig.data:
        return empty("No study has re-trained its best configurations yet (the final stage runs at the end of a "
                      "search; --final-top-k 0 skips it).")
    bases = {id(study): (base, suffix) for study, base, suffix in measured}  # each study's on the split it measured
    for text, dash, value in distinct_baselines([study for study, _, _ in measured], lambda study: bases[id(study)]):
        fig.add_hline(y=value, line_dash=dash, line_color="#888", annotation_text=text, annotation_position="top left")
    fig.update_layout(title="Top configurations re-trained with new seeds: mean and 95% interval; the epoch chosen "
                            "on val, test read once", yaxis_title="L1", height=460, xaxis=dict(type="category"))
    return "".join(f'<p class="legend">{n}</p>' for n in notes) + splits_legend(studies) + figure_html(fig, "fig-final")


def section_l1(studies: list[Study]) -> str:
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35],
                        subplot_titles=("best val L1 of every finished trial", "best trial per study"))
    any_data = False
    for study in studies:
        done = finished(study)
        if done.empty:
            continue
        any_data = True
        fig.add_trace(go.Box(y=done["best_val_l1"], name=study.label, boxpoints="all", jitter=0.4, pointpos=0,
                             text=done["trial_id"], hovertemplate="%{text}: %{y:.4f}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Bar(x=[study.label], y=[done["best_val_l1"].min()], name=study.label, showlegend=False,
                             text=[f"{done['best_val_l1'].min():.4f}"], textposition="outside"), row=1, col=2)
    if not any_data:
        return empty("No trial has finished yet.")
    baseline_lines(fig, studies, label=False, row=1, col=1)
    baseline_lines(fig, studies, row=1, col=2)
    # Log scale on the trials: one diverging or collapsed trial (L1 near 1) would flatten the rest.
    fig.update_yaxes(title_text="val L1 (lower is better, log scale)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="val L1", row=1, col=2)
    fig.update_layout(height=480, showlegend=False)
    return baseline_legend(studies) + figure_html(fig, "fig-l1")
