"""Blocks from whole searches: ``benchmarks/cpu_search.py`` (cpu_search.json) and ``benchmarks/search.py``
(search_runs.parquet): what a user's search finds, how long it takes, and how the strategies compare."""

from __future__ import annotations

import json

from benchmarks.tables.common import BEFORE_CAP, RESULTS, RenderError, before_cap, load, measured, ratio


def _final_cell(final: dict | None) -> str:
    if not final or not final.get("configurations"):
        return "-"
    chosen = next((c for c in final["configurations"] if c["rank"] == final.get("recommended_rank")),
                  final["configurations"][0])
    stat = chosen.get("test_l1") or {}
    if stat.get("mean") is None:
        return "-"
    black = (final.get("test_baselines") or {}).get("black_l1")
    return f"{stat['mean']:.4f} ± {stat.get('ci95') or 0:.4f} ({stat['mean'] / black:.2f}x), #{chosen['rank']}"


def _verdict(value: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "-"}[value]


def _departures(case: dict) -> str:
    """What a search changed: its best configuration against the current study file's defaults."""
    from search.study_file import load_space

    defaults = load_space(case["model"]).defaults()
    best = case["summary"]["best_config"]
    changed = [f"{k} {defaults[k]} -> {best[k]}" for k in defaults if k in best and best[k] != defaults[k]]
    return ", ".join(changed) or "none: the defaults were best"


def cpu_search_table() -> str:
    """benchmarks/README.md: whole greedy searches at the cpu preset (benchmarks/cpu_search.py)."""
    results = load("cpu_search.json")
    lines = ["| case | data | trials | wall (search + final) | best val L1 (x all-black) | all-black val L1 | "
             "final test L1, recommended (x all-black) | beats the baseline: val / test | measured on |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in sorted(results):
        case = results[name]
        s = case["summary"]
        black = s["baselines"]["black_l1"]
        final = s.get("final") or {}
        lines.append(f"| {name} | {case['data']} | {s['trials']} | {case['wall_seconds']:,.0f} s | "
                     f"{ratio(s['best_val_l1'], black)} | {black:.4f} | {_final_cell(final)} | "
                     f"{_verdict(s.get('beats_baseline'))} / {_verdict(final.get('beats_baseline'))} | "
                     f"{measured(case['provenance'])} |")
    lines += ["", "| case | its best configuration where it differs from the study file's defaults |", "| --- | --- |"]
    lines += [f"| {name} | {_departures(results[name])} |" for name in sorted(results)]
    notes = [f"- {name}: {results[name]['note']}" for name in sorted(results) if results[name].get("note")]
    lines += [""] + notes if notes else []
    commands = sorted({results[name]["provenance"]["command"] for name in results})
    return "\n".join(lines + ["", "Made by " + "; ".join(f"`{c}`" for c in commands) + " (`results/cpu_search.json`)."])


def unlearnable_run() -> str:
    """docs/data.md: the greedy autoencoder search on data that cannot be learned, as printed."""
    case = load("cpu_search.json")["autoencoder-independent"]
    s = case["summary"]
    black = s["baselines"]["black_l1"]
    return "\n".join([
        f"Measured on {measured(case['provenance'])}, on a set of 300 train, 100 val and 100 test",
        "pairs whose maps are random blocks drawn without looking at the images, a fifth of them lit",
        "(`python -m trainables.data generate DIR --train 300 --val 100 --test 100 --maps independent`;",
        "`python -m benchmarks.cpu_search --case autoencoder-independent` runs the whole measurement).",
        f"The greedy autoencoder search ends at val L1 {s['best_val_l1']:.4f}, {s['best_val_l1'] / black:.3f}x the "
        f"all-black map's {black:.4f},",
        f"and `summary.json` has `\"beats_baseline\": {json.dumps(s['beats_baseline'])}`. Its last lines:",
        "", "```", f"$ {case['search_command']}", "...", *case["last_lines"], "```"])


def strategy_comparison() -> str:
    """docs/strategies.md: each strategy against greedy on the same seeds, at greedy's budget (benchmarks/search.py's runs)."""
    import pandas as pd

    from benchmarks.search import interval

    path = RESULTS / "search_runs.parquet"
    if not path.is_file():
        raise RenderError(f"{path} is missing; run python -m benchmarks.search.")
    runs = pd.read_parquet(path)
    lines = ["| family | strategy | seeds | best val L1 at B minus greedy's, paired: mean ± 95% | seeds below greedy | "
             "epochs spent (x B): median, max | measured |", "| --- | --- | --- | --- | --- | --- | --- |"]
    claims, overspent, over_commits = [], [], []
    for family, group in runs.groupby("family", sort=True):
        greedy = group[group["strategy"] == "greedy"].set_index("seed")["best_at_1"]
        for name, rows in group[~group["strategy"].isin(["greedy", "greedy+asha"])].groupby("strategy", sort=True):
            rows = rows.set_index("seed")
            seeds = sorted(set(rows.index) & set(greedy.index))
            diffs = [float(rows.loc[s, "best_at_1"] - greedy.loc[s]) for s in seeds]
            mean, half = interval(diffs)  # of the paired differences
            spent = rows["epochs_spent"] / rows["greedy_epochs"]
            if spent.max() > 1.05:
                overspent.append(f"{name} on the {family} (up to {spent.max():.2f}x)")
                over_commits += list(rows["commit"]) if "commit" in rows else [None]
            if half == half and (mean + half < 0 or mean - half > 0):
                claims.append(f"`{name}` ends {'below' if mean < 0 else 'above'} greedy on the {family}")
            dates = ", ".join(sorted({f"{c[:7]}, {d}" for c, d in zip(rows["commit"], rows["measured"].astype(str))}
                                     if "commit" in rows else set(rows["measured"].astype(str))))
            lines.append(f"| {family} | {name} | {len(seeds)} | {mean:+.4f} ± {half:.4f} | "
                         f"{sum(d < 0 for d in diffs)}/{len(diffs)} | {spent.median():.2f}, {spent.max():.2f} | {dates} |")
    lines += ["", "Where the interval excludes 0: " + ("; ".join(claims) if claims else "nowhere") + "."]
    if overspent:
        why = (f"{BEFORE_CAP}, so a search overshot by up to that many trials' epochs, and its 1.0x row had those "
               "epochs to spend" if before_cap(over_commits) else "more than the cap should allow "
               "(search/strategies/budget.py): a bug to report")
        lines += ["", "**Over budget:** some runs spent more than greedy's B (" + "; ".join(overspent) + "): " + why + "."]
    lines += ["", "This compares best val L1, the luckiest single run of each search, at a size where models barely "
              "learn; what a user publishes is the final stage's test L1 of the configuration a search selects "
              "(`python -m benchmarks.publish`: below)."]
    return "\n".join(lines)


def preset_times() -> str:
    """docs/options.md: how long whole cpu-preset greedy searches took, final stage included."""
    results = load("cpu_search.json")
    current = [name for name in sorted(results) if not results[name].get("note")]  # a note marks a superseded file
    parts = [f"{name} {results[name]['wall_seconds'] / 60:.0f} min ({results[name]['summary']['trials']} trials)"
             for name in current]
    when = "; ".join(sorted({measured(results[name]["provenance"]) for name in current}))
    return (f"Whole greedy searches at `--preset cpu`, final stage included (`benchmarks/README.md`, section 7; "
            f"{when}): " + ", ".join(parts) + ".")


def search_efficiency() -> str:
    """benchmarks/README.md, section 3: every strategy at greedy's budget (benchmarks/search.py's own table)."""
    from benchmarks.search import load_runs, render as render_search, summarize

    runs = load_runs()
    if runs.empty:
        raise RenderError(f"{RESULTS / 'search_runs.parquet'} is missing; run python -m benchmarks.search.")
    over = runs[runs["epochs_spent"] > 1.05 * runs["greedy_epochs"]]
    stale = over[over["commit"].isna()] if "commit" in over else over  # rows from before results recorded commits
    note = []
    if len(stale):
        note = ["", "", f"**Stale:** {len(stale)} of these {len(runs)} runs spent more than 1.05x greedy's B (up to "
                f"{(stale['epochs_spent'] / stale['greedy_epochs']).max():.2f}x): they were measured "
                f"({', '.join(sorted(set(stale['measured'].astype(str))))}) before the epoch budget's counter was fixed, "
                "and on study files that did not yet search the loss, dropout and weight decay; they are to be "
                "re-measured (`python -m benchmarks.search --quick`: the autoencoder, 3 seeds, 4 strategies)."]
    elif len(over):
        why = (BEFORE_CAP if before_cap(over["commit"] if "commit" in over else [None]) else "more than the cap "
               "should allow (search/strategies/budget.py): a bug to report")
        note = ["", "", f"**Over budget:** {len(over)} of these {len(runs)} runs spent more than 1.05x greedy's B (up to "
                f"{(over['epochs_spent'] / over['greedy_epochs']).max():.2f}x): {why}."]
    return _runs_measured(runs) + "\n\n" + render_search(summarize(runs), runs) + "\n".join(note)


def _runs_measured(runs) -> str:
    """Which commits, commands and machines the stored rows of search_runs.parquet come from."""
    if "provenance" not in runs:
        return "Measured before rows recorded their commit: " + ", ".join(sorted(set(runs["measured"].astype(str)))) + "."
    groups = runs.groupby("provenance", sort=False)
    parts = [f"{len(rows)} runs on {measured(json.loads(prov))}, `{json.loads(prov)['command']}`" for prov, rows in groups]
    return "Measured: " + "; ".join(parts) + " (`results/search_runs.parquet`, one row per family, seed and strategy)."


def main_job_time() -> str:
    """README.md's opening: how long the main job (greedy over the GAN, cpu preset without a GPU) took."""
    case = load("cpu_search.json")["gan-synthetic"]
    gpu = load("gpu-h100.json")
    search = gpu["search"]
    blocks = len({row["block"] for row in search["trials_table"]})
    s = case["summary"]
    final = s.get("final") or {}
    runs = len(final.get("configurations", [])) * len(final.get("seeds", []))
    return (f"(Measured on {measured(case['provenance'])}, without a GPU: {case['wall_seconds'] / 60:.0f} minutes, "
            f"{s['trials']} trials of search, then the final stage, the top {len(final.get('configurations', []))} "
            f"configurations re-trained with {len(final.get('seeds', []))} new seeds each ({runs} runs) and measured on "
            "the test split. Its first lines state an estimate measured on your "
            "machine, and every finished trial's line says how many trials are done and how long is left. With a GPU "
            f"it runs the report's full budget instead: on one {gpu['env']['device']} ({measured(gpu['provenance'])}, "
            f"an earlier study file), {blocks} greedy blocks ({search['trials']} trials) took "
            f"{search['total_s'] / 60:.0f} minutes before the lease ran out; the report's GAN search took approximately 3 days on an RTX 3070.)")


def main_job_profile() -> str:
    """benchmarks/README.md: where the main job's wall time went (benchmarks/profile.py on the gan-synthetic case)."""
    from benchmarks.profile import table

    case = load("cpu_search.json")["gan-synthetic"]
    if "profile" not in case:
        return ("Not measured at the commit of the case above (its run predates the per-epoch phase columns): "
                "`python -m benchmarks.cpu_search --case gan-synthetic` records it.")
    p = case["profile"]
    notes = [] if not p["epochs_without_phases"] else [
        "", f"{p['epochs_without_phases']} epoch rows had no phase columns (replayed after a resume): counted as set-up."]
    return "\n".join([f"Case `gan-synthetic`, {measured(case['provenance'])}:", "", *table(p), *notes, "",
                      "Made by `python -m benchmarks.cpu_search --case gan-synthetic` (`benchmarks/profile.py` on its "
                      "study; `results/cpu_search.json`, the case's `profile`)."])


def example_run() -> str:
    """README.md: a whole cpu-preset search as the command prints it (the first and last lines of a case)."""
    results = load("cpu_search.json")
    name = next((n for n in ("gan-synthetic", "diffusion-synthetic", "autoencoder-synthetic")
                 if results.get(n, {}).get("first_lines")), None)
    if name is None:
        raise RenderError("results/cpu_search.json has no case with its first lines; run "
                          "python -m benchmarks.cpu_search --case diffusion-synthetic.")
    case = results[name]
    skipped = case["lines"] - len(case["first_lines"]) - len(case["last_lines"])
    return "\n".join([f"Case `{name}` of `benchmarks/cpu_search.py`, {measured(case['provenance'])}, "
                      f"{case['wall_seconds'] / 60:.0f} minutes (its first and last lines; the run printed "
                      f"{case['lines']}):", "", "```", f"$ {case['search_command']}", *case["first_lines"],
                      f"... ({max(skipped, 0)} lines)", *case["last_lines"], "```"])


def channel_reading() -> str:
    """README.md: how to read the per-channel line, from the GAN's cpu search and the seeds benchmark."""
    case = load("cpu_search.json")["gan-synthetic"]
    s = case["summary"]
    base, best = s["baselines"], s["best_channel_l1"]
    parts = [f"The GAN's search (section 7 of `benchmarks/README.md`, {measured(case['provenance'])}) predicts the "
             f"sparse green \"falsely remembered\" channel at {best['falsely_remembered'] / base['black_l1_falsely_remembered']:.2f}x "
             f"the all-black map's val L1 ({best['falsely_remembered']:.4f} against {base['black_l1_falsely_remembered']:.4f}), "
             f"and the red \"remembered\" one at {best['remembered'] / base['black_l1_remembered']:.2f}x."]
    seeds = [r for r in load("seeds.json")["families"] if r["family"] == "gan" and set(r["changed"]) <= {"l1_weight"}]
    if seeds:
        from search.study_file import load_space

        default = load_space("gan").defaults()["l1_weight"]
        noise = ", ".join(f"{r['cv']:.1%} at L1 weight {r['changed'].get('l1_weight', default):g}" for r in seeds)
        parts.append(f"The greedy GAN decides the L1 weight first; its val L1 varies between seeds by {noise} "
                     "(sd / mean over 5 seeds, `python -m benchmarks.seeds`).")
    return " ".join(parts)


def data_baselines() -> str:
    """docs/data.md: the synthetic default's baselines on val (learning.json) and test (a cpu search's final stage)."""
    val = load("learning.json")["baselines"]
    test = load("cpu_search.json")["gan-synthetic"]["summary"]["final"]["test_baselines"]
    return (f"Its baselines: all-black map val L1 {val['black_l1']:.4f}, mean training map {val['mean_map_l1']:.4f} "
            f"(per channel, remembered / falsely remembered: all-black {val['black_l1_remembered']:.4f} / "
            f"{val['black_l1_falsely_remembered']:.4f}, mean map {val['mean_map_l1_remembered']:.4f} / "
            f"{val['mean_map_l1_falsely_remembered']:.4f}); on test, all-black {test['black_l1']:.4f}, mean map "
            f"{test['mean_map_l1']:.4f} (per channel {test['black_l1_remembered']:.4f} / "
            f"{test['black_l1_falsely_remembered']:.4f} all-black).")


def same_behaviour_table() -> str:
    """benchmarks/README.md, section 14: the smoke studies before and after a restructuring (benchmarks/same_behaviour.py)."""
    results = load("same_behaviour.json")
    lines = [f"`{results['provenance']['command']}` ({measured(results['provenance'])}; `results/same_behaviour.json`): "
             f"commit {results['before'][:7]} against {results['after'][:7]}.", "",
             "| study | trials | epochs | final stage | printed lines (times taken out) |", "| --- | --- | --- | --- | --- |"]

    def cell(v: dict) -> str:
        rows = v.get("rows", v.get("count"))
        size = "none" if rows == [None, None] else f"{rows[0]} / {rows[1]}"
        if "differing" in v and not v["equal"] and rows[0] == rows[1]:
            return f"**{v.get('n_differing', len(v['differing']))} of {rows[0]} differ** (below)"
        return ("same" if v["equal"] else "**differ**") + f" ({size})"

    for name, v in results["studies"].items():
        lines.append(f"| `{v['command']}` | {cell(v['trials.parquet'])} | {cell(v['epochs.parquet'])} | "
                     f"{cell(v['final.parquet'])} | {cell(v['lines'])} |")
    for name, v in results["studies"].items():
        for before, after in v["lines"]["differing"]:
            lines += ["", f"{name}, a line that differs:", "", "```", f"- {before}", f"+ {after}", "```"]
    return "\n".join(lines)
