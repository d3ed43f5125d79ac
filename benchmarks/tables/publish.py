"""Blocks from ``benchmarks/publish.py`` (publish.json): strategies judged by the final stage's test L1 of the
configuration each search selects, paired against greedy on the same seeds."""

from __future__ import annotations

from benchmarks.tables.common import BUDGET_CAP, RESULTS, descends, load, measured, row_measured


def _rows() -> list[dict]:
    return load("publish.json")["rows"] if (RESULTS / "publish.json").is_file() else []


def _unmeasured(rows: list[dict]) -> list[str]:
    """The full plan's family, strategy and budget without a row yet ('pbt on the gan', or 'at 0.5B' when only
    that budget is missing)."""
    from benchmarks.publish import FRACTIONS, PLANS

    have = {(r["family"], r["strategy"], r["budget"]) for r in rows}
    out = []
    for family, strategies in PLANS["full"].items():
        for strategy in strategies:
            budgets = [1.0] if strategy == "greedy" else list(FRACTIONS)
            missing = [b for b in budgets if (family, strategy, b) not in have]
            if missing:
                out.append(f"{strategy} on the {family}" + ("" if len(missing) == len(budgets) else
                                                             " at " + ", ".join(f"{b:g}B" for b in missing)))
    return out


def _claim(r: dict) -> str:
    """'`tpe` at 0.5B selects ... on the autoencoder (...)': one summary row whose paired interval excludes 0."""
    return (f"`{r['strategy']}` at {r['budget']:g}B selects a configuration {'below' if r['diff'] < 0 else 'above'} "
            f"greedy's test L1 on the {r['family']} ({r['diff']:+.4f} ± {r['diff_half']:.4f}, {r['below']}/{r['pairs']} "
            "seeds below)")


def claims(rows: list[dict]) -> list[tuple[str, str]]:
    """(family, :func:`_claim`) for each row whose paired interval excludes 0."""
    from benchmarks.publish import excludes_zero, summarize

    return [(r["family"], _claim(r)) for r in summarize(rows) if r["strategy"] != "greedy" and excludes_zero(r)]


def publish_table() -> str:
    """benchmarks/README.md, section 3b: the table, when and how it was measured, what is not measured yet."""
    from benchmarks.publish import table

    rows = _rows()
    if not rows:
        return "**Not measured yet**: `benchmarks/results/publish.json` has no row, so no claim is made."
    runs = sorted({(measured(r["provenance"]), r["provenance"]["command"]) for r in rows if r.get("provenance")})
    found = claims(rows)
    missing = _unmeasured(rows)
    before_cap = sorted({r["provenance"]["commit"][:7] for r in rows if r.get("provenance")  # greedy sets B, spends no
                         and r["strategy"] != "greedy" and not descends(r["provenance"]["commit"], BUDGET_CAP)})
    stale = ([f"**Stale: the epochs-spent column.** {len(before_cap)} of the commits that measured a budgeted strategy "
              f"({', '.join(before_cap)}) predate commit {BUDGET_CAP}, where `--budget-epochs` became a cap (a trial "
              "that cannot fit is not started): their spending over 1.00x B is the old behaviour, and their selections (the test L1 columns) "
              "were made under it. `python -m benchmarks.publish` re-measures both; what the cap spends today, per strategy "
              "and trials at once, is section 3d."] if before_cap else [])
    return "\n".join([
        "Measured " + "; ".join(f"{where}, with `{command}`" for where, command in runs) + " (`results/publish.json`):",
        "", table(rows), "",
        "Where the paired interval excludes 0: " + ("; ".join(text for _, text in found) if found else "nowhere") + ".",
        *([""] + stale if stale else []),
        *(["", "Not measured yet: " + ", ".join(missing) + " (`python -m benchmarks.publish --keep` adds them)."]
          if missing else [])])


def recommendation() -> str:
    """docs/strategies.md: what the publish table supports, per family, and nothing more."""
    from benchmarks.publish import excludes_zero, summarize

    rows = _rows()
    families = sorted({r["family"] for r in rows})
    measured_on = f"; measured {row_measured(rows)}" if rows else ""
    lines = [f"Judged by what a researcher publishes, the final stage's test L1 of the configuration each search "
             f"selects (`benchmarks/README.md`, section 3b{measured_on}):"]
    if not rows:
        lines.append("not measured yet, so nothing is recommended over greedy.")
    summary = [r for r in summarize(rows) if r["strategy"] != "greedy"]
    for family in families:
        paired = [r for r in summary if r["family"] == family and r["pairs"] >= 2]
        better = [_claim(r) for r in paired if excludes_zero(r) and r["diff"] < 0]
        worse = [_claim(r) for r in paired if excludes_zero(r) and r["diff"] > 0]
        undecided = [f"`{r['strategy']}` at {r['budget']:g}B" for r in paired if not excludes_zero(r)]
        rest = [f"{', '.join(undecided)} within {'their' if len(undecided) > 1 else 'its'} paired interval of "
                "greedy's"] if undecided else []
        if better:
            verdict = "recommended over greedy: " + "; ".join(better + worse + rest)
        elif worse:
            verdict = "none is recommended over greedy: " + "; ".join(worse + rest)
        elif paired:
            verdict = (f"no strategy ({', '.join(sorted({r['strategy'] for r in paired}))}) selects a configuration "
                       "whose test L1 differs from greedy's by more than its paired interval, so none is recommended "
                       "over greedy")
        else:
            verdict = "no strategy has two seeds paired with greedy's yet, so none is recommended over greedy"
        lines.append(f"- the {family}: {verdict}.")
    lines += _population_verdict(rows)
    few = [f"{r['strategy']} at {r['budget']:g}B on the {r['family']} ({r['pairs']} seed{'s' * (r['pairs'] != 1)})"
           for r in summary if r["pairs"] < 2]
    if few:
        lines.append(f"- too few seeds paired with greedy's for an interval yet: {', '.join(few)}.")
    missing = _unmeasured(rows)
    if missing:
        lines.append(f"- not measured: {', '.join(missing)}.")
    return "\n".join(lines)


def _population_verdict(rows: list[dict]) -> list[str]:
    """Whether population-based training beats greedy, per budget measured, in words the table supports."""
    from benchmarks.publish import excludes_zero, summarize

    pbt = [r for r in summarize(rows) if r["strategy"] == "pbt"]
    if not pbt:
        return ["- whether population-based training beats greedy is not known: it is not measured yet."]
    out = []
    for r in pbt:
        where = f"on the {r['family']} at {r['budget']:g}B"
        if r["pairs"] < 2:
            out.append(f"- population-based training {where}: {r['pairs']} paired seed, no interval, so whether it "
                       "beats greedy is not known yet.")
        elif excludes_zero(r):
            verdict = "beats greedy" if r["diff"] < 0 else "does worse than greedy"
            out.append(f"- population-based training {verdict} {where} ({r['diff']:+.4f} ± {r['diff_half']:.4f}, "
                       f"{r['below']}/{r['pairs']} seeds below greedy).")
        else:
            out.append(f"- population-based training does not beat greedy {where}: the paired difference "
                       f"{r['diff']:+.4f} ± {r['diff_half']:.4f} includes 0 ({r['below']}/{r['pairs']} seeds below "
                       "greedy).")
    return out


def population_table() -> str:
    """benchmarks/README.md, section 3c: population size and perturbation interval at one budget (population.json)."""
    from benchmarks.population import table

    if not (RESULTS / "population.json").is_file():
        return ("**Not measured yet**: `benchmarks/results/population.json` has no row, so the defaults of "
                "`--population` and `--perturbation-interval` are not measured, and nothing is claimed for them.")
    rows = load("population.json")["rows"]
    commands = sorted({r["provenance"]["command"] for r in rows if r.get("provenance")})
    seeds = sorted({r["seed"] for r in rows})
    partial = ([f"Seeds measured: {', '.join(map(str, seeds))}. With fewer than two there is no interval, and no "
                "default is said to be better or worse (`python -m benchmarks.population --keep` continues)."]
               if len(seeds) < 2 else [])
    return "\n".join([f"Measured {row_measured(rows)}, with " + "; ".join(f"`{c}`" for c in commands)
                      + " (`results/population.json`):", "", table(rows), *([""] + partial if partial else [])])
