"""Inside the searches: learning curves of the top trials (ASHA stops, overfitting, per-channel L1),
greedy's path block by block, and the hyperparameters' effects (parallel coordinates, PED-ANOVA)."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.study import Study, baseline_lines, empty, figure_html, finished

TOP_CURVES = 5


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
    done = finished(study)["trial_id"].tolist()
    flagged = overfitting_trials(study.epochs, done)
    if not done or not flagged:
        return ""
    shown = ", ".join(flagged[:12]) + (f" and {len(flagged) - 12} more" if len(flagged) > 12 else "")
    return (f'<p class="warning">{html.escape(study.label)}: {len(flagged)} of {len(done)} finished trials '
            f"overfit: their train/val gap kept growing after their best epoch ({html.escape(shown)}). "
            "The epoch is chosen on val, so their best is kept; more data or stronger regularisation may help.</p>")


def section_curves(studies: list[Study]) -> str:
    parts = []
    for index, study in enumerate(studies):
        if study.epochs.empty:
            continue
        parts.append(_overfitting_note(study))
        top = finished(study).nsmallest(TOP_CURVES, "best_val_l1")
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
        baseline_lines(fig, [study])
        fig.update_layout(title=f"{study.label}: train (dotted) and val L1 of the top trials; x = stopped early",
                          xaxis_title="epoch", yaxis_title="L1", height=420)
        parts.append(figure_html(fig, f"fig-curves-{index}"))
        channels = _channel_figure(study, ids[0])
        if channels is not None:
            parts.append(figure_html(channels, f"fig-channels-{index}"))
    return "\n".join(parts) or empty("No epoch has been reported yet.")


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
        baseline_lines(fig, [study])
        fig.update_layout(title=f"{study.label}: greedy path (each block varies one parameter; red = adopted)",
                          yaxis_title="best val L1", height=460, xaxis=dict(type="category"))
        parts.append(figure_html(fig, f"fig-greedy-{index}"))
    return "\n".join(parts) or empty("No greedy study among the inputs.")


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
        done = finished(study)
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
        parts.append(figure_html(fig, f"fig-parcoords-{index}"))
        importance = _importances(done, study.hp_columns)
        if importance:
            names = list(importance)[::-1]
            bar = go.Figure(go.Bar(x=[importance[n] for n in names], y=names, orientation="h"))
            bar.update_layout(title=f"{study.label}: parameter importance (PED-ANOVA, Optuna)", xaxis_title="importance",
                              height=120 + 28 * len(names))
            parts.append(figure_html(bar, f"fig-importance-{index}"))
        else:
            parts.append(empty(f"{study.label}: importance needs at least 4 finished trials varying a parameter."))
    return "\n".join(parts) or empty("Not enough finished trials for hyperparameter effects.")
