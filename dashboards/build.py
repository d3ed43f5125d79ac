"""One self-contained HTML report comparing studies (plotly.js embedded: opens offline).

    python -m dashboards.build runs/greedy-gan runs/tpe-gan [more study folders] -o report.html

Sections: the final numbers (the top configurations re-trained over seeds, test L1 with 95%
intervals beside the test baselines), L1 comparison across families and strategies (with both dataset baselines),
search progress (best-so-far against trials, wall time and epochs spent), search efficiency
(several studies of one family, such as seeds or strategies: best-so-far against epochs spent, one
median line and min-max band per strategy), learning curves of the top trials (ASHA stops marked), the greedy path, population members' schedules (pbt, pb2), hyperparameter effects
(parallel coordinates and PED-ANOVA importance through Optuna), and galleries of the best,
worst and most informative validation predictions (image | true map | predicted map).
A study that is still running renders with what exists so far. The output depends only
on the study folders, so re-running the builder gives the same file.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots
from PIL import Image

from dashboards.schedules import section_schedules
from search.errors import StudyError
from search.runner.baseline import better_baseline, recommended, study_verdict
from search.runner.final import FINAL_TABLE
from search.store.results import ResultsStore
from search.store.location import Location
from search.store.study import StudyStore

TOP_CURVES = 5
GALLERY_SIZE = 4
FINISHED = ("completed", "stopped")


class DashboardError(Exception):
    """Bad input to the builder; the message says what and how to fix it."""


@dataclass
class Study:
    store: StudyStore
    meta: dict[str, Any]
    trials: pd.DataFrame
    epochs: pd.DataFrame

    @property
    def folder(self) -> Location:
        return self.store.root

    @property
    def name(self) -> str:
        return self.meta.get("study", self.folder.name)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.meta['strategy']}, {self.meta['family']})"

    @property
    def hp_columns(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith("hp_")]


def load_study(folder: str | Path) -> Study:
    try:
        store = StudyStore.at(folder)
    except StudyError as err:
        raise DashboardError(str(err)) from None
    if not store.record.exists():
        raise DashboardError(f"{folder} is not a study folder (no study.json); pass folders under your runs dir, "
                             "such as runs/greedy-gan.")
    meta = store.record.read()
    trials, epochs = (_frame(store.read_table(name)) for name in (ResultsStore.TRIALS, ResultsStore.EPOCHS))
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "status", "best_val_l1", "epochs_run", "started_at", "ended_at"])
    return Study(store, meta, trials, epochs)


def _frame(table) -> pd.DataFrame:
    return table.to_pandas() if table is not None else pd.DataFrame()


def _finished(study: Study) -> pd.DataFrame:
    t = study.trials
    return t[t["status"].isin(FINISHED) & t["best_val_l1"].notna()]


def _empty(message: str) -> str:
    return f'<p class="empty">{html.escape(message)}</p>'


def _figure_html(fig: go.Figure, div_id: str) -> str:
    top = fig.layout.margin.t if fig.layout.margin.t is not None else 50
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=top, b=50))
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


BASELINES = (("black_l1", "all-black map", "dot"), ("mean_map_l1", "mean training map", "dash"))


def _baseline_lines(fig: go.Figure, studies: list[Study], *, label: bool = True, **where: Any) -> None:
    """Both dataset baselines as horizontal lines (labelled in the plot unless ``label`` is False:
    plotly misplaces line annotations on log axes, so those plots explain the lines in text)."""
    seen = set()
    for study in studies:
        base = study.meta.get("baselines") or {}
        for key, name, dash in BASELINES:
            if key in base and (key, round(base[key], 6)) not in seen:
                seen.add((key, round(base[key], 6)))
                text = {"annotation_text": f"{name} {base[key]:.4f}", "annotation_position": "top left"} if label else {}
                fig.add_hline(y=base[key], line_dash=dash, line_color="#888", **text, **where)


def _baseline_legend(studies: list[Study]) -> str:
    parts = []
    for study in studies[:1]:
        base = study.meta.get("baselines") or {}
        parts += [f"{'dotted' if dash == 'dot' else 'dashed'}: {name} {base[key]:.4f}"
                  for key, name, dash in BASELINES if key in base]
    return f'<p class="legend">Reference lines, {"; ".join(parts)}.</p>' if parts else ""


def section_final(studies: list[Study]) -> str:
    """The numbers to publish: the re-trained top configurations, mean and 95% interval over seeds, beside
    the baselines on the same split (search.runner.final)."""
    from search.runner.final import interval

    fig = go.Figure()
    baselines: dict[str, float] = {}
    notes = []
    for study in studies:
        table = study.store.read_table(FINAL_TABLE)
        if table is None:
            continue
        rows = table.to_pandas()
        final = (study.store.read_summary() or {}).get("final")
        has_test = bool(rows["test_l1"].notna().any())
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
        base = (final or {}).get("test_baselines") if has_test else study.meta.get("baselines")
        for key, name, _ in BASELINES:
            if base and key in base:
                baselines.setdefault(f"{name} ({'test' if has_test else 'val'})", base[key])
    if not fig.data:
        return _empty("No study has re-trained its best configurations yet (the final stage runs at the end of a "
                      "search; --final-top-k 0 skips it).")
    for (name, value), dash in zip(baselines.items(), ("dot", "dash", "dashdot", "longdash")):
        fig.add_hline(y=value, line_dash=dash, line_color="#888", annotation_text=f"{name} {value:.4f}",
                      annotation_position="top left")
    fig.update_layout(title="Top configurations re-trained with new seeds: mean and 95% interval; the epoch chosen "
                            "on val, test read once", yaxis_title="L1", height=460, xaxis=dict(type="category"))
    return "".join(f'<p class="legend">{n}</p>' for n in notes) + _figure_html(fig, "fig-final")


def section_l1(studies: list[Study]) -> str:
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35],
                        subplot_titles=("best val L1 of every finished trial", "best trial per study"))
    any_data = False
    for study in studies:
        done = _finished(study)
        if done.empty:
            continue
        any_data = True
        fig.add_trace(go.Box(y=done["best_val_l1"], name=study.label, boxpoints="all", jitter=0.4, pointpos=0,
                             text=done["trial_id"], hovertemplate="%{text}: %{y:.4f}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Bar(x=[study.label], y=[done["best_val_l1"].min()], name=study.label, showlegend=False,
                             text=[f"{done['best_val_l1'].min():.4f}"], textposition="outside"), row=1, col=2)
    if not any_data:
        return _empty("No trial has finished yet.")
    _baseline_lines(fig, studies, label=False, row=1, col=1)
    _baseline_lines(fig, studies, row=1, col=2)
    # Log scale on the trials: one diverging or collapsed trial (L1 near 1) would flatten the rest.
    fig.update_yaxes(title_text="val L1 (lower is better, log scale)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="val L1", row=1, col=2)
    fig.update_layout(height=480, showlegend=False)
    return _baseline_legend(studies) + _figure_html(fig, "fig-l1")


def section_progress(studies: list[Study]) -> str:
    fig = make_subplots(rows=1, cols=3, subplot_titles=("against trials", "against wall time (s)", "against epochs spent"),
                        shared_yaxes=True)
    any_data = False
    for index, study in enumerate(studies):
        t = study.trials[study.trials["ended_at"].notna()].sort_values("ended_at")
        if t.empty:
            continue
        any_data = True
        value = t["best_val_l1"].where(t["status"].isin(FINISHED))
        best = value.cummin().ffill()
        start = pd.to_datetime(study.trials["started_at"]).min()
        wall = (pd.to_datetime(t["ended_at"]) - start).dt.total_seconds()
        spent = t["epochs_run"].fillna(0).cumsum()
        colour = f"hsl({(index * 67) % 360}, 65%, 45%)"
        for col, x in enumerate((np.arange(1, len(t) + 1), wall, spent), start=1):
            fig.add_trace(go.Scatter(x=x, y=best, mode="lines+markers", line_shape="hv", name=study.label,
                                     legendgroup=study.label, showlegend=col == 1, line=dict(color=colour)),
                          row=1, col=col)
    if not any_data:
        return _empty("No trial has finished yet.")
    _baseline_lines(fig, studies, label=False, row=1, col="all")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="best val L1 so far (log scale)", row=1, col=1)
    fig.update_layout(height=430)
    return _baseline_legend(studies) + _figure_html(fig, "fig-progress")


def best_so_far_by_epochs(trials: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One study's best val L1 so far against epochs spent, as in the progress section: the trials that
    ended, in the order they ended; after each, the cumulative epochs run and the best val L1 of the
    finished trials so far (NaN until the first one finished)."""
    t = trials[trials["ended_at"].notna()]
    if t.empty:
        return np.empty(0), np.empty(0)
    t = t.sort_values(["ended_at", "trial_id"], kind="stable")
    best = t["best_val_l1"].where(t["status"].isin(FINISHED)).astype(float).cummin().ffill()
    spent = t["epochs_run"].fillna(0).astype(float).cumsum()
    return spent.to_numpy(), best.to_numpy()


def best_so_far_on_grid(trials: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """The step function of ``best_so_far_by_epochs`` on an epoch grid: at x, the best found by the trials
    whose cumulative epochs are <= x; NaN before the first finished trial and beyond the study's last
    epoch (a study says nothing about budgets it did not spend)."""
    spent, best = best_so_far_by_epochs(trials)
    grid = np.asarray(grid, dtype=float)
    out = np.full(grid.shape, np.nan)
    if spent.size == 0:
        return out
    index = np.searchsorted(spent, grid, side="right") - 1
    inside = (index >= 0) & (grid <= spent[-1])
    out[inside] = best[index[inside]]
    return out


def efficiency_band(curves: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Median, minimum and maximum over studies at each grid point, of the studies with a value there
    (``n``: how many); NaN where none has."""
    stack = np.vstack(curves) if curves else np.empty((0, 0))
    n = np.isfinite(stack).sum(axis=0)
    band = {"n": n}
    for name, reduce in (("median", np.median), ("low", np.min), ("high", np.max)):
        band[name] = np.array([reduce(column[np.isfinite(column)]) if count else np.nan
                               for column, count in zip(stack.T, n)])
    return band


def _studies_label(count: int) -> str:
    return f"{count} stud{'y' if count == 1 else 'ies'}"


def section_efficiency(studies: list[Study]) -> str:
    """Strategies compared on what they cost: per family, the best val L1 so far against epochs spent,
    over the studies of each strategy (seeds, repeats): median line, min-max band."""
    families: dict[str, list[Study]] = {}
    for study in studies:
        families.setdefault(str(study.meta.get("family", "?")), []).append(study)
    several = {family: members for family, members in sorted(families.items()) if len(members) >= 2}
    if not several:
        return _empty("This section needs several studies of one model family: for example the same search run "
                      "with several --seed values, or with several strategies.")
    strategies = sorted({str(s.meta.get("strategy", "?")) for members in several.values() for s in members})
    colours = {name: f"hsl({(index * 67) % 360}, 65%, 45%)" for index, name in enumerate(strategies)}
    fig = make_subplots(rows=len(several), cols=1, subplot_titles=[f"family {f}" for f in several],
                        vertical_spacing=0.12 / max(1, len(several) - 1) if len(several) > 1 else 0.0)
    any_data = False
    for row, (family, members) in enumerate(several.items(), start=1):
        curves = {id(s): best_so_far_by_epochs(s.trials) for s in members}
        with_data = [s for s in members if np.isfinite(curves[id(s)][1]).any()]
        if not with_data:
            continue
        grid = np.unique(np.concatenate([curves[id(s)][0] for s in with_data]))
        groups: dict[tuple[str, str], list[Study]] = {}
        for s in with_data:
            groups.setdefault((str(s.meta.get("strategy", "?")), str(s.meta.get("domain") or "")), []).append(s)
        for (strategy, domain), group in sorted(groups.items()):
            split = len({d for st, d in groups if st == strategy}) > 1  # one strategy over two domains
            name = f"{strategy}{f', {domain} domain' if split and domain else ''} ({_studies_label(len(group))})"
            name = f"{family}: {name}" if len(several) > 1 else name
            band = efficiency_band([best_so_far_on_grid(s.trials, grid) for s in group])
            keep = band["n"] > 0
            x, n = grid[keep], band["n"][keep]
            colour = colours[strategy]
            group_key = f"{family}/{name}"  # the legend entry shows or hides the line and its band together
            fig.add_trace(go.Scatter(x=x, y=band["low"][keep], mode="lines", line_shape="hv",
                                     line=dict(color=colour, width=0.5), legendgroup=group_key, showlegend=False,
                                     name=f"{name}: min", hovertemplate="min %{y:.4f}<extra></extra>"),
                          row=row, col=1)
            fig.add_trace(go.Scatter(x=x, y=band["high"][keep], mode="lines", line_shape="hv", fill="tonexty",
                                     fillcolor=colour.replace("hsl(", "hsla(").replace(")", ", 0.18)"),
                                     line=dict(color=colour, width=0.5), legendgroup=group_key, showlegend=False,
                                     name=f"{name}: max", hovertemplate="max %{y:.4f}<extra></extra>"),
                          row=row, col=1)
            fig.add_trace(go.Scatter(x=x, y=band["median"][keep], customdata=n, mode="lines", line_shape="hv",
                                     line=dict(color=colour, width=2), legendgroup=group_key, name=name,
                                     hovertemplate=f"{html.escape(name)}<br>%{{x:g}} epochs: median %{{y:.4f}} "
                                                   "over %{customdata} studies<extra></extra>"),
                          row=row, col=1)
            any_data = True
        _baseline_lines(fig, members, label=False, row=row, col=1)
        fig.update_xaxes(title_text="epochs spent", row=row, col=1)
        fig.update_yaxes(title_text="best val L1 so far (log scale)", type="log", row=row, col=1)
    if not any_data:
        return _empty("No trial has finished yet.")
    alone = sorted(set(families) - set(several))
    notes = (f'<p class="legend">Families with a single study, not shown: {html.escape(", ".join(alone))}.</p>'
             if alone else "")
    text = ('<p class="legend">Per strategy, the median over its studies (line) and the range from the best to the '
            'worst study (band), of the best val L1 found within a number of epochs; a study counts only up to the '
            'epochs it spent.</p>')
    fig.update_layout(height=120 + 360 * len(several))
    return text + notes + _baseline_legend(studies) + _figure_html(fig, "fig-efficiency")


def overfitting_trials(epochs: pd.DataFrame, trial_ids: list[str]) -> list[str]:
    """The trials whose train/val gap (val L1 - train L1) kept growing, epoch after epoch, for at least two
    epochs after their best val epoch: they fit the training images better while the maps got no better."""
    found = []
    for trial_id in trial_ids:
        e = epochs[epochs["trial_id"] == trial_id].sort_values("epoch").dropna(subset=["val_l1", "train_l1"])
        if len(e) < 3:
            continue
        best = int(np.argmin(e["val_l1"].to_numpy()))
        gap = (e["val_l1"] - e["train_l1"]).to_numpy()[best:]
        if len(gap) >= 3 and bool(np.all(np.diff(gap) > 0)):
            found.append(trial_id)
    return found


def _overfitting_note(study: Study) -> str:
    finished = _finished(study)["trial_id"].tolist()
    flagged = overfitting_trials(study.epochs, finished)
    if not finished or not flagged:
        return ""
    shown = ", ".join(flagged[:12]) + (f" and {len(flagged) - 12} more" if len(flagged) > 12 else "")
    return (f'<p class="warning">{html.escape(study.label)}: {len(flagged)} of {len(finished)} finished trials '
            f"overfit: their train/val gap kept growing after their best epoch ({html.escape(shown)}). "
            "The epoch is chosen on val, so their best is kept; more data or stronger regularisation may help.</p>")


def section_curves(studies: list[Study]) -> str:
    parts = []
    for index, study in enumerate(studies):
        if study.epochs.empty:
            continue
        parts.append(_overfitting_note(study))
        top = _finished(study).nsmallest(TOP_CURVES, "best_val_l1")
        running = study.trials[study.trials["status"] == "running"]["trial_id"].tolist()
        ids = top["trial_id"].tolist() + running[: max(0, TOP_CURVES - len(top))]
        if not ids:
            continue
        fig = go.Figure()
        for rank, trial_id in enumerate(ids):
            e = study.epochs[study.epochs["trial_id"] == trial_id].sort_values("epoch")
            status = study.trials.set_index("trial_id").loc[trial_id, "status"]
            colour = f"hsl({(rank * 71) % 360}, 65%, 45%)"
            fig.add_trace(go.Scatter(x=e["epoch"], y=e["val_l1"], mode="lines+markers", name=f"{trial_id} val",
                                     line=dict(color=colour)))
            fig.add_trace(go.Scatter(x=e["epoch"], y=e["train_l1"], mode="lines", name=f"{trial_id} train",
                                     line=dict(color=colour, dash="dot")))
            if status == "stopped" and not e.empty:
                fig.add_trace(go.Scatter(x=[e["epoch"].iloc[-1]], y=[e["val_l1"].iloc[-1]], mode="markers",
                                         marker=dict(symbol="x", size=14, color=colour),
                                         name=f"{trial_id} stopped by ASHA"))
        _baseline_lines(fig, [study])
        fig.update_layout(title=f"{study.label}: train (dotted) and val L1 of the top trials; x = stopped early",
                          xaxis_title="epoch", yaxis_title="L1", height=420)
        parts.append(_figure_html(fig, f"fig-curves-{index}"))
        channels = _channel_figure(study, ids[0])
        if channels is not None:
            parts.append(_figure_html(channels, f"fig-channels-{index}"))
    return "\n".join(parts) or _empty("No epoch has been reported yet.")


CHANNEL_COLOURS = {"remembered": "#c62828", "falsely_remembered": "#2e7d32"}


def _channel_figure(study: Study, trial_id: str) -> go.Figure | None:
    """Val L1 per map channel of one trial, each beside the all-black map on that channel: a model
    that ignores the falsely-remembered (green) channel shows it here and not in the overall L1."""
    e = study.epochs[study.epochs["trial_id"] == trial_id].sort_values("epoch")
    base = study.meta.get("baselines", {})
    fig = go.Figure()
    for channel, colour in CHANNEL_COLOURS.items():
        column = f"val_l1_{channel}"
        if column not in e or e[column].isna().all():
            return None
        label = channel.replace("_", " ")
        fig.add_trace(go.Scatter(x=e["epoch"], y=e[column], mode="lines+markers", name=f"{label} (val)",
                                 line=dict(color=colour)))
        if f"black_l1_{channel}" in base:
            fig.add_hline(y=base[f"black_l1_{channel}"], line=dict(color=colour, dash="dot"),
                          annotation_text=f"all-black, {label}")
    fig.update_layout(title=f"{study.label}: val L1 per channel of the best trial {trial_id}; dotted = all-black map",
                      xaxis_title="epoch", yaxis_title="L1", height=360)
    return fig


def section_greedy(studies: list[Study]) -> str:
    parts = []
    for index, study in enumerate(studies):
        state_file = study.store.state_file("greedy_state.json")  # greedy's path, where a study has one
        if not state_file.exists():
            continue
        state = state_file.read()
        fig = go.Figure()
        for block in state["blocks"]:
            kept = str(block.get("decision", "")).startswith("kept")
            label = f"{block['index']}: {block['param']}" + (" (kept: within noise)" if kept else "")
            values = block.get("values") or {}
            if not values:  # the open block: show what has finished
                values = {}
                for key in block["keys"]:
                    if key in state["evaluated"]:
                        values[str(json.loads(key)[block["param"]])] = state["evaluated"][key]
            adopted = None if block.get("adopted") is None else str(block["adopted"])
            xs = [label] * len(values)
            fig.add_trace(go.Scatter(
                x=xs, y=list(values.values()), mode="markers+text", text=list(values.keys()), textposition="middle right",
                marker=dict(size=[16 if v == adopted else 9 for v in values],
                            color=["#d62728" if v == adopted else "#1f77b4" for v in values]),
                name=label, showlegend=False,
                hovertemplate=f"{block['param']}=%{{text}}: %{{y:.4f}}"
                              + (f" ({html.escape(block['decision'])}; margin {state.get('margin', 0):.1%})"
                                 if block.get("decision") else "") + "<extra></extra>"))
        _baseline_lines(fig, [study])
        fig.update_layout(title=f"{study.label}: greedy path (each block varies one parameter; red = adopted)",
                          yaxis_title="best val L1", height=460, xaxis=dict(type="category"))
        parts.append(_figure_html(fig, f"fig-greedy-{index}"))
    return "\n".join(parts) or _empty("No greedy study among the inputs.")


def section_population(studies: list[Study]) -> str:
    return (section_schedules(studies, _figure_html)
            or _empty("No population study (--strategy pbt or pb2) among the inputs."))


def _importances(done: pd.DataFrame, hp_columns: list[str]) -> dict[str, float]:
    """PED-ANOVA importances via Optuna (no scikit-learn needed), on parameters every finished trial has."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    columns = [c for c in hp_columns if done[c].notna().all() and done[c].nunique() > 1]
    if len(done) < 4 or not columns:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {c[3:]: CategoricalDistribution(sorted(done[c].unique().tolist(), key=str)) for c in columns}
    study = optuna.create_study(direction="minimize")
    for _, row in done.iterrows():
        params = {c[3:]: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in columns}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row["best_val_l1"])))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    # Optuna orders tied importances arbitrarily; a report built twice must be the same file.
    return dict(sorted(importances.items(), key=lambda item: (-item[1], item[0])))


def section_effects(studies: list[Study]) -> str:
    parts = []
    for index, study in enumerate(studies):
        done = _finished(study)
        columns = [c for c in study.hp_columns if done[c].notna().any()] if not done.empty else []
        if len(done) < 2 or not columns:
            continue
        dims = []
        for c in columns:
            series = done[c]
            if series.dtype == object or series.dtype == bool or str(series.dtype) in ("string", "str"):
                labels = sorted(series.fillna("(none)").astype(str).unique())
                codes = series.fillna("(none)").astype(str).map({v: i for i, v in enumerate(labels)})
                dims.append(dict(label=c[3:], values=codes, tickvals=list(range(len(labels))), ticktext=labels))
            else:
                dims.append(dict(label=c[3:], values=series.astype(float).fillna(series.astype(float).min())))
        dims.append(dict(label="best val L1", values=done["best_val_l1"]))
        fig = go.Figure(go.Parcoords(dimensions=dims, line=dict(color=done["best_val_l1"], colorscale="Viridis_r",
                                                                 showscale=True, colorbar=dict(title="val L1"))))
        fig.update_layout(title=f"{study.label}: parallel coordinates (colour: best val L1)", height=480,
                          margin=dict(t=110))
        parts.append(_figure_html(fig, f"fig-parcoords-{index}"))
        importance = _importances(done, study.hp_columns)
        if importance:
            names = list(importance)[::-1]
            bar = go.Figure(go.Bar(x=[importance[n] for n in names], y=names, orientation="h"))
            bar.update_layout(title=f"{study.label}: parameter importance (PED-ANOVA, Optuna)", xaxis_title="importance",
                              height=120 + 28 * len(names))
            parts.append(_figure_html(bar, f"fig-importance-{index}"))
        else:
            parts.append(_empty(f"{study.label}: importance needs at least 4 finished trials varying a parameter."))
    return "\n".join(parts) or _empty("Not enough finished trials for hyperparameter effects.")


def _png(array_chw: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array_chw.transpose(1, 2, 0))).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def gallery_selection(per_image_l1: np.ndarray, truth: np.ndarray, k: int = GALLERY_SIZE) -> dict[str, list[int]]:
    """Indices of the best, worst and most informative predictions.

    "Best" are the lowest-L1 predictions among images whose true map is not all black: an
    all-black map predicted black says nothing about the model. "Most informative" (the
    report's favourites): among predictions better than the median, those whose true maps
    have the largest lit area; the all-black ones that win on L1 by painting black are what
    the report warned about, so they are not chosen here either.
    """
    order = np.argsort(per_image_l1, kind="stable")
    lit = (truth.astype(np.float32) > 25).mean(axis=(1, 2, 3))
    best = [int(i) for i in order if lit[i] > 0][:k]
    good = per_image_l1 <= np.median(per_image_l1)
    informative = [int(i) for i in np.argsort(-(lit * good), kind="stable") if good[i] and lit[i] > 0][:k]
    return {"best": best, "worst": [int(i) for i in order[::-1][:k]], "most informative": informative}


def section_galleries(studies: list[Study]) -> str:
    parts = []
    for study in studies:
        done = _finished(study)
        val = study.store.read_val_data()
        if done.empty or val is None:
            continue
        best = done.nsmallest(1, "best_val_l1").iloc[0]
        pred = study.store.read_predictions(best["trial_id"], json.loads(best["config_json"]))
        if pred is None:
            continue
        images, truth, stems = val["images"], val["maps"], val["stems"]
        predictions, per_image = pred["predictions"], pred["per_image_l1"]
        chosen = gallery_selection(per_image, truth)
        rows = [f'<h3>{html.escape(study.label)}: best trial {html.escape(best["trial_id"])} '
                f'(val L1 {best["best_val_l1"]:.4f})</h3>']
        for kind, indices in chosen.items():
            cells = "".join(
                f'<figure><div class="triple"><img src="{_png(images[i])}" alt="image"><img src="{_png(truth[i])}" alt="true map">'
                f'<img src="{_png(predictions[i])}" alt="predicted map"></div>'
                f'<figcaption>{html.escape(str(stems[i]))}: L1 {per_image[i]:.4f}</figcaption></figure>'
                for i in indices)
            rows.append(f'<h4>{kind}</h4><div class="gallery" data-kind="{kind}">{cells or _empty("none")}</div>')
        parts.append("\n".join(rows))
    return "\n".join(parts) or _empty("No finished trial with stored predictions yet.")


def _channel_cell(done: pd.DataFrame, base: dict[str, Any], channel: str) -> str:
    """The best trial's L1 on one channel, beside the all-black map's on the same channel."""
    column = f"best_val_l1_{channel}"
    black = base.get(f"black_l1_{channel}")
    if done.empty or column not in done or black is None:
        return "-"
    value = done.nsmallest(1, "best_val_l1").iloc[0][column]
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
            done = _finished(study)
            if done.empty:
                cells = ["-", "no trial has finished yet", "-", "-", "-"]
            else:
                best = done.nsmallest(1, "best_val_l1").iloc[0]
                base = study.meta.get("baselines", {})
                cells = [_config_text(study, best["trial_id"]), "no test numbers: the final stage has not run "
                         "(re-run the search command, or drop --final-top-k 0)", "-",
                         f"val L1 {best['best_val_l1']:.4f} (one run, selected on the same val: optimistic)",
                         f"all-black {base.get('black_l1', float('nan')):.4f}, mean map {base.get('mean_map_l1', float('nan')):.4f}"]
        if verdict is False:  # the trivial map is the answer: say so where the recommendation was
            name = better_baseline(final.get("test_baselines") or study.meta.get("baselines", {}))[0]
            beaten.append(f"No configuration beats {name} on this data in study {study.label}")
            cells[0] = f"no configuration beats {name} on this data (the best found: {cells[0]})"
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in [study.label, *cells]) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in ("study", "configuration to use", "headline (mean ± 95% interval)",
                                               "remembered / falsely remembered", "validation", "baselines on the same split"))
    warning = "".join(f'<p class="warning">{html.escape(line)}: that trivial map does as well. Try '
                      "more data, a smaller model or stronger regularisation (README, 'When nothing beats the "
                      "baseline').</p>" for line in beaten)
    return (warning + f'<table class="answer"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            '<p class="legend">The configuration is the re-trained one with the lowest mean val L1 (selection uses '
            'validation only); the headline is its test L1 over the seeds, read once. The evidence follows.</p>')


def section_summary(studies: list[Study]) -> str:
    rows = []
    for study in studies:
        t = study.trials
        counts = t["status"].value_counts().to_dict() if not t.empty else {}
        done = _finished(study)
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


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
.empty{color:#777;font-style:italic} .legend{color:#555;font-size:.9em}
.warning{background:#fff3cd;border-left:4px solid #d62728;padding:.5em 1em;font-weight:bold}
.gallery{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0} figcaption{font-size:.85em;color:#444}
.triple img{width:128px;height:128px;image-rendering:pixelated;margin-right:2px;border:1px solid #ccc}
"""

SECTIONS = [
    ("final-results", "Final: the best configurations over seeds, on the test split", section_final),
    ("l1-comparison", "L1 comparison across model families and strategies", section_l1),
    ("search-progress", "Search progress: best val L1 so far", section_progress),
    ("efficiency", "Search efficiency: best so far against epochs spent, one band per strategy", section_efficiency),
    ("learning-curves", "Learning curves of the top trials", section_curves),
    ("greedy-path", "Greedy path", section_greedy),
    ("schedules", "Population-based training: members' schedules", section_population),
    ("hyperparameter-effects", "Hyperparameter effects", section_effects),
    ("galleries", "Galleries: image | true map | predicted map", section_galleries),
]


def build(folders: list[str | Path], output: str | Path) -> Path:
    if not folders:
        raise DashboardError("give at least one study folder, such as runs/greedy-gan.")
    studies = [load_study(f) for f in folders]
    body = [f'<section id="answer"><h2>The answer: what to use, and its numbers</h2>{section_answer(studies)}</section>',
            f'<section id="summary"><h2>Studies</h2>{section_summary(studies)}</section>']
    for anchor, title, render in SECTIONS:
        body.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{render(studies)}</section>')
    page = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Memorability-map search report</title>"
        f"<style>{STYLE}</style><script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
        "<h1>Memorability-map hyperparameter search</h1>"
        "<p>Val L1 is the mean absolute error between predicted and true VMS maps in [-1, 1] over the validation set "
        "(lower is better). Judge it against the better of the two baselines: a model can win on L1 by painting black.</p>"
        + "\n".join(body) + "</body></html>"
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", help="study folders (runs/<study>, or a bucket's s3://BUCKET/PREFIX/<study>)")
    parser.add_argument("-o", "--output", default="report.html")
    args = parser.parse_args(argv)
    try:
        path = build(args.studies, args.output)
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write {args.output}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
