"""The dashboard's population section: each member's hyperparameters epoch by epoch, and whose weights it took.

One figure per population study (``schedules.parquet``, search/store/schedules.py): a panel per
perturbed hyperparameter, a line per member, a marker where a member took another's weights
(hover says whose, from which epoch), and below them each member's val L1, the number the
scheduler ranked members by.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from dashboards.study import Study, empty, figure_html
from search.store.schedules import TABLE


def schedule_figure(label: str, rows: pd.DataFrame) -> go.Figure:
    names = [c[3:] for c in rows.columns if c.startswith("hp_")]
    panels = [*names, "val_l1"]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.03,
                        subplot_titles=[*names, "val L1 (what members are ranked by)"])
    colours = qualitative.Plotly
    for member, mine in rows.sort_values("epoch").groupby("member"):
        colour = colours[int(member) % len(colours)]
        took = mine[mine["donor_member"].notna()]
        for row, column in enumerate([f"hp_{n}" for n in names] + ["val_l1"], start=1):
            fig.add_trace(go.Scatter(x=mine["epoch"], y=mine[column], mode="lines", line=dict(color=colour),
                                     name=f"member {member}", legendgroup=str(member), showlegend=row == 1,
                                     hovertemplate=f"member {member}, epoch %{{x}}: %{{y:.4g}}<extra></extra>"),
                          row=row, col=1)
            if len(took):
                text = [f"member {member} took member {int(d)}'s weights of epoch {int(e)}"
                        for d, e in zip(took["donor_member"], took["donor_epoch"])]
                fig.add_trace(go.Scatter(x=took["epoch"], y=took[column], mode="markers", text=text,
                                         marker=dict(color=colour, size=9, symbol="triangle-up"),
                                         legendgroup=str(member), showlegend=False,
                                         hovertemplate="%{text}: %{y:.4g}<extra></extra>"), row=row, col=1)
    for row, name in enumerate(panels, start=1):
        if name in ("l1_weight",) or name.endswith("_lr"):
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_xaxes(title_text="epoch", row=len(panels), col=1)
    fig.update_layout(title=f"{label}: members' schedules (triangles: took another member's weights, then perturbed)",
                      height=220 * len(panels) + 80)
    return fig


def section_population(studies: list[Study]) -> str:
    parts = []
    for index, study in enumerate(studies):
        table = study.store.read_table(TABLE)
        if table is None or table.num_rows == 0:
            continue
        parts.append(figure_html(schedule_figure(study.label, table.to_pandas()), f"fig-schedules-{index}"))
    return "\n".join(parts) or empty("No population study (--strategy pbt or pb2) among the inputs.")
