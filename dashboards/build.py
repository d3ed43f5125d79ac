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
import html
import sys
from pathlib import Path

from plotly.offline import get_plotlyjs

from dashboards.answer import section_answer, section_final, section_l1, section_summary
from dashboards.efficiency import section_efficiency, section_progress
from dashboards.galleries import section_galleries
from dashboards.schedules import section_population
from dashboards.study import DashboardError, load_study
from dashboards.trials import section_curves, section_effects, section_greedy


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
