"""What a search cost: each study's best val L1 so far against trials, wall time and epochs spent, and,
over several studies of one family, one median line and min-max band per strategy."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.study import FINISHED, Study, baseline_legend, baseline_lines, empty, figure_html


def section_progress(studies: list[Study]) -> str:
    fig = make_subplots(rows=1, cols=3, subplot_titles=("against trials", "against wall time (s)", "against epochs spent"),
                        shared_yaxes=True)
    any_data = False
    for index, study in enumerate(studies):
        t = ended_in_order(study.trials)
        if t.empty:
            continue
        any_data = True
        start = pd.to_datetime(study.trials["started_at"]).min()
        wall = (pd.to_datetime(t["ended_at"]) - start).dt.total_seconds()
        colour = f"hsl({(index * 67) % 360}, 65%, 45%)"
        for col, x in enumerate((np.arange(1, len(t) + 1), wall, t["spent"]), start=1):
            fig.add_trace(go.Scatter(x=x, y=t["best_so_far"], mode="lines+markers", line_shape="hv", name=study.label,
                                     legendgroup=study.label, showlegend=col == 1, line=dict(color=colour)),
                          row=1, col=col)
    if not any_data:
        return empty("No trial has finished yet.")
    baseline_lines(fig, studies, label=False, row=1, col="all")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="best val L1 so far (log scale)", row=1, col=1)
    fig.update_layout(height=430)
    return baseline_legend(studies) + figure_html(fig, "fig-progress")


def ended_in_order(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that ended, in the order they ended (ties by trial id), with ``spent``: the epochs run
    up to and with each, and ``best_so_far``: the best val L1 of the finished trials so far (NaN until the
    first one finished)."""
    t = trials[trials["ended_at"].notna()].sort_values(["ended_at", "trial_id"], kind="stable")
    return t.assign(spent=t["epochs_run"].fillna(0).astype(float).cumsum(),
                    best_so_far=t["best_val_l1"].where(t["status"].isin(FINISHED)).astype(float).cummin().ffill())


def best_so_far_by_epochs(trials: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One study's best val L1 so far against epochs spent, as in the progress section."""
    t = ended_in_order(trials)
    return t["spent"].to_numpy(), t["best_so_far"].to_numpy()


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


def _add_band(fig: go.Figure, row: int, grid: np.ndarray, band: dict[str, np.ndarray], *, name: str, colour: str,
              group: str) -> None:
    """One strategy's min-max band and median line; ``group`` makes its legend entry show or hide all three."""
    keep = band["n"] > 0
    x, n = grid[keep], band["n"][keep]
    fig.add_trace(go.Scatter(x=x, y=band["low"][keep], mode="lines", line_shape="hv",
                             line=dict(color=colour, width=0.5), legendgroup=group, showlegend=False,
                             name=f"{name}: min", hovertemplate="min %{y:.4f}<extra></extra>"),
                  row=row, col=1)
    fig.add_trace(go.Scatter(x=x, y=band["high"][keep], mode="lines", line_shape="hv", fill="tonexty",
                             fillcolor=colour.replace("hsl(", "hsla(").replace(")", ", 0.18)"),
                             line=dict(color=colour, width=0.5), legendgroup=group, showlegend=False,
                             name=f"{name}: max", hovertemplate="max %{y:.4f}<extra></extra>"),
                  row=row, col=1)
    fig.add_trace(go.Scatter(x=x, y=band["median"][keep], customdata=n, mode="lines", line_shape="hv",
                             line=dict(color=colour, width=2), legendgroup=group, name=name,
                             hovertemplate=f"{html.escape(name)}<br>%{{x:g}} epochs: median %{{y:.4f}} "
                                           "over %{customdata} studies<extra></extra>"),
                  row=row, col=1)


def section_efficiency(studies: list[Study]) -> str:
    """Strategies compared on what they cost: per family, the best val L1 so far against epochs spent,
    over the studies of each strategy (seeds, repeats): median line, min-max band."""
    families: dict[str, list[Study]] = {}
    for study in studies:
        families.setdefault(str(study.meta.get("family", "?")), []).append(study)
    several = {family: members for family, members in sorted(families.items()) if len(members) >= 2}
    if not several:
        return empty("This section needs several studies of one model family: for example the same search run "
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
            _add_band(fig, row, grid, band, name=name, colour=colours[strategy], group=f"{family}/{name}")
            any_data = True
        baseline_lines(fig, members, label=False, row=row, col=1)
        fig.update_xaxes(title_text="epochs spent", row=row, col=1)
        fig.update_yaxes(title_text="best val L1 so far (log scale)", type="log", row=row, col=1)
    if not any_data:
        return empty("No trial has finished yet.")
    alone = sorted(set(families) - set(several))
    notes = (f'<p class="legend">Families with a single study, not shown: {html.escape(", ".join(alone))}.</p>'
             if alone else "")
    text = ('<p class="legend">Per strategy, the median over its studies (line) and the range from the best to the '
            'worst study (band), of the best val L1 found within a number of epochs; a study counts only up to the '
            'epochs it spent.</p>')
    fig.update_layout(height=120 + 360 * len(several))
    return text + notes + baseline_legend(studies) + figure_html(fig, "fig-efficiency")
