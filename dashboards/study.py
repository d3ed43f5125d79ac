"""What every dashboard section reads: a study folder loaded once (its record, trials and epochs
tables), and the pieces the sections share (the finished trials, the baseline lines, the figure HTML)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import plotly.graph_objects as go

from trainables.errors import InputError
from trainables.storage import Location
from search.store.results import RANKED, ResultsStore
from search.store.study import StudyStore

FINISHED = RANKED  # the statuses whose best val L1 ranks a trial


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
        if not store.record.exists():
            raise DashboardError(f"{folder} is not a study folder (no study.json); pass folders under your runs dir, "
                                 "such as runs/greedy-gan.")
        meta = store.record.read()
        trials, epochs = (_frame(store.read_table(name)) for name in (ResultsStore.TRIALS, ResultsStore.EPOCHS))
    except InputError as err:  # the study's location: a bucket's URI, its credentials
        raise DashboardError(str(err)) from None
    except ValueError as err:  # a damaged study.json (JSON) or Parquet file (pyarrow's ArrowInvalid)
        raise DashboardError(f"{folder}: a file of the study cannot be read ({str(err).splitlines()[0]}); restore it "
                             "from a backup, or leave this study out of the report") from None
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "status", "best_val_l1", "epochs_run", "started_at", "ended_at"])
    return Study(store, meta, trials, epochs)


def _frame(table) -> pd.DataFrame:
    return table.to_pandas() if table is not None else pd.DataFrame()


def finished(study: Study) -> pd.DataFrame:
    """The trials that rank, best first: search.store.results.ranked_trials' order (a tie to the lower trial id)."""
    t = study.trials
    return t[t["status"].isin(FINISHED) & t["best_val_l1"].notna()].sort_values(["best_val_l1", "trial_id"],
                                                                                kind="stable")


def empty(message: str) -> str:
    return f'<p class="empty">{html.escape(message)}</p>'


def figure_html(fig: go.Figure, div_id: str) -> str:
    top = fig.layout.margin.t if fig.layout.margin.t is not None else 50
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=top, b=50))
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


BASELINES = (("black_l1", "all-black map", "dot"), ("mean_map_l1", "mean training map", "dash"))


def distinct_baselines(studies: list[Study], base_of: Callable[[Study], tuple[dict | None, str]] | None = None
                       ) -> list[tuple[str, str, float]]:
    """(label, dash, value) of each baseline line to draw: one per value. ``base_of`` gives a study's baselines and
    what to add to their names (default: the val split's, nothing). Where the studies' values differ (other data), a
    label names the studies its line is theirs."""
    base_of = base_of or (lambda study: (study.meta.get("baselines"), ""))
    found: dict[tuple[str, str, float], list[str]] = {}
    for study in studies:
        base, suffix = base_of(study)
        for key, name, dash in BASELINES:
            if base and key in base:
                found.setdefault((f"{name}{suffix}", dash, round(float(base[key]), 6)), []).append(study.name)
    differ = len(found) > len({(name, dash) for name, dash, _ in found})
    return [(f"{name} {value:.4f}" + (f" ({', '.join(names)})" if differ else ""), dash, value)
            for (name, dash, value), names in found.items()]


def baseline_lines(fig: go.Figure, studies: list[Study], *, label: bool = True, **where: Any) -> None:
    """Both dataset baselines as horizontal lines (labelled in the plot unless ``label`` is False:
    plotly misplaces line annotations on log axes, so those plots explain the lines in text)."""
    for text, dash, value in distinct_baselines(studies):
        labels = {"annotation_text": text, "annotation_position": "top left"} if label else {}
        fig.add_hline(y=value, line_dash=dash, line_color="#888", **labels, **where)


def baseline_legend(studies: list[Study]) -> str:
    parts = [f"{'dotted' if dash == 'dot' else 'dashed'}: {html.escape(text)}"
             for text, dash, _ in distinct_baselines(studies)]
    return f'<p class="legend">Reference lines, {"; ".join(parts)}.</p>' if parts else ""
