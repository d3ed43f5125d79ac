"""Render the measured numbers into the docs, from the result files, between generated markers.

    python -m benchmarks.render           # rewrite every rendered block
    python -m benchmarks.render --check   # exit 1 when a rendered block differs from what the results give

A block sits between ``<!-- rendered: NAME -->`` and ``<!-- /rendered: NAME -->`` in a doc;
everything between the markers is replaced, everything outside them is left alone. Each block
names the commit and the date its numbers were measured on (from the result's ``provenance``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict:
    path = RESULTS / name
    if not path.is_file():
        raise RenderError(f"{path} is missing; run the benchmark that writes it (its docstring says how).")
    return json.loads(path.read_text())


def _measured(prov: dict) -> str:
    commit = (prov.get("commit") or "unknown")[:7] + (" + uncommitted changes" if prov.get("dirty") else "")
    machine = prov.get("machine", {})
    where = machine.get("gpu") or f"{machine.get('cores')} cores, {machine.get('cpu')}"
    return f"commit {commit}, {prov.get('date', '?')[:10]}, {where}"


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value:.4f} ({value / base:.2f}x)"


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


def cpu_search_table() -> str:
    """benchmarks/README.md: whole greedy searches at the cpu preset (benchmarks/cpu_search.py)."""
    results = _load("cpu_search.json")
    lines = ["| case | data | trials | wall (search + final) | best val L1 (x all-black) | all-black val L1 | "
             "final test L1, recommended (x all-black) | beats the baseline: val / test | measured on |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in sorted(results):
        case = results[name]
        s = case["summary"]
        black = s["baselines"]["black_l1"]
        final = s.get("final") or {}
        lines.append(f"| {name} | {case['data']} | {s['trials']} | {case['wall_seconds']:,.0f} s | "
                     f"{_ratio(s['best_val_l1'], black)} | {black:.4f} | {_final_cell(final)} | "
                     f"{_verdict(s.get('beats_baseline'))} / {_verdict(final.get('beats_baseline'))} | "
                     f"{_measured(case['provenance'])} |")
    notes = [f"- {name}: {results[name]['note']}" for name in sorted(results) if results[name].get("note")]
    lines += [""] + notes if notes else []
    commands = sorted({results[name]["provenance"]["command"] for name in results})
    return "\n".join(lines + ["", "Made by " + "; ".join(f"`{c}`" for c in commands) + " (`results/cpu_search.json`)."])


def unlearnable_run() -> str:
    """README.md: the greedy autoencoder search on data that cannot be learned, as printed."""
    case = _load("cpu_search.json")["autoencoder-independent"]
    s = case["summary"]
    black = s["baselines"]["black_l1"]
    return "\n".join([
        f"Measured on {_measured(case['provenance'])}, on a set of 300 train, 100 val and 100 test",
        "pairs whose maps are random blocks drawn without looking at the images, a fifth of them lit",
        "(`python -m trainables.data generate DIR --train 300 --val 100 --test 100 --maps independent`;",
        "`python -m benchmarks.cpu_search --case autoencoder-independent` runs the whole measurement).",
        f"The greedy autoencoder search ends at val L1 {s['best_val_l1']:.4f}, {s['best_val_l1'] / black:.3f}x the "
        f"all-black map's {black:.4f},",
        f"and `summary.json` has `\"beats_baseline\": {json.dumps(s['beats_baseline'])}`. Its last lines:",
        "", "```", f"$ {case['search_command']}", "...", *case["last_lines"], "```"])


def strategy_comparison() -> str:
    """README.md: each strategy against greedy on the same seeds, at greedy's budget (benchmarks/search.py's runs)."""
    import pandas as pd

    from benchmarks.search import interval

    path = RESULTS / "search_runs.parquet"
    if not path.is_file():
        raise RenderError(f"{path} is missing; run python -m benchmarks.search.")
    runs = pd.read_parquet(path)
    lines = ["| family | strategy | seeds | best val L1 at B minus greedy's, paired: mean ± 95% | seeds below greedy | "
             "epochs spent (x B): median, max | measured |", "| --- | --- | --- | --- | --- | --- | --- |"]
    claims, overspent = [], []
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
            if half == half and (mean + half < 0 or mean - half > 0):
                claims.append(f"`{name}` ends {'below' if mean < 0 else 'above'} greedy on the {family}")
            dates = ", ".join(sorted(set(rows["measured"].astype(str))))
            lines.append(f"| {family} | {name} | {len(seeds)} | {mean:+.4f} ± {half:.4f} | "
                         f"{sum(d < 0 for d in diffs)}/{len(diffs)} | {spent.median():.2f}, {spent.max():.2f} | {dates} |")
    lines += ["", "Where the interval excludes 0: " + ("; ".join(claims) if claims else "nowhere") + "."]
    if overspent:
        lines += ["", "**Not yet a fair comparison:** these runs predate the fix of the epoch budget, and some spent "
                  "more than greedy's B: " + "; ".join(overspent) + ". No strategy is recommended over greedy on "
                  "these numbers; they are to be re-measured."]
    return "\n".join(lines)


def preset_times() -> str:
    """README.md: how long whole cpu-preset greedy searches took, final stage included."""
    results = _load("cpu_search.json")
    current = [name for name in sorted(results) if not results[name].get("note")]  # a note marks a superseded file
    parts = [f"{name} {results[name]['wall_seconds'] / 60:.0f} min ({results[name]['summary']['trials']} trials)"
             for name in current]
    when = "; ".join(sorted({_measured(results[name]["provenance"]) for name in current}))
    return (f"Whole greedy searches at `--preset cpu`, final stage included (`benchmarks/README.md`, section 7; "
            f"{when}): " + ", ".join(parts) + ".")


def gpu_floor() -> str:
    """benchmarks/README.md, section 10: the GAN epoch's floor on the H100 (floor.json over gpu-h100.json's rates)."""
    floor, gpu = _load("floor.json"), _load("gpu-h100.json")
    gan = next(row for row in floor["families"] if row["family"] == "gan")
    env = gpu["env"]
    epoch_flops = gan["step_flops"] * gan["steps_per_epoch"]
    compute_s = epoch_flops / (env["bf16_matmul_tflops"] * 1e12)
    memory_s = gan["adam_bytes_per_step"] * gan["steps_per_epoch"] / (env["copy_gb_s"] * 1e9)
    return "\n".join([
        f"**The floor.** One training step of the GAN at c = {gan['width']} (batch {gan['batch']}, "
        f"{gan['size']}x{gan['size']}) is {gan['step_flops'] / 1e9:.1f} GFLOP",
        f"(`torch.utils.flop_counter`, `python -m benchmarks.floor`, {_measured(floor['provenance'])}), so an epoch of "
        f"{gan['steps_per_epoch']} steps is {epoch_flops / 1e12:.1f} TFLOP:",
        f"{compute_s * 1e3:.0f} ms at the {env['device']}'s measured bf16 matrix rate "
        f"({env['bf16_matmul_tflops']:.0f} TFLOP/s); Adam's update moves",
        f"{gan['adam_bytes_per_step'] / 1e9:.2f} GB a step ({gan['parameters'] / 1e6:.1f}M parameters: weights and "
        f"two moments read and written, gradients read, fp32),",
        f"{memory_s * 1e3:.0f} ms an epoch at its measured copy rate ({env['copy_gb_s'] / 1e3:.1f} TB/s). "
        f"An epoch cannot take much under {(compute_s + memory_s):.2f} s."])


def _section_measured(results: dict, section: str) -> str:
    prov = (results.get("section_provenance") or {}).get(section)
    if prov:
        return _measured(prov)
    date = (results.get("section_dates") or {}).get(section) or results.get("date")
    return f"{date}, {results.get('machine')} (before results recorded their commit)"


def overhead_table() -> str:
    """benchmarks/README.md, section 1: our epoch under Ray Tune against a bare PyTorch loop (benchmarks/run.py)."""
    results = _load("quick.json")
    over = results["overhead"]
    lines = [f"Measured {_section_measured(results, 'overhead')}, `python -m benchmarks.run --quick --only overhead` "
             f"({over['epochs']} epochs, widths / {over['width_divisor']}, {over['threads']} thread):", "",
             "| family | ours under Ray Tune (s) | bare PyTorch loop (s) | ratio | Ray's result files per epoch |",
             "| --- | --- | --- | --- | --- |"]
    met, missed = [], []
    for family, row in over["families"].items():
        lines.append(f"| {family} | {row['ours_s']:.2f} | {row['bare_s']:.2f} | {row['ratio']:.3f} | "
                     f"{row['ray_logs_ms']:.2f} ms ({row['ray_logs_fraction']:.2%}) |")
        (met if row["ratio"] <= 1.10 else missed).append(f"{family} {row['ratio']:.2f}")
    s = over["search"]
    lines += ["", f"Whole search ({s['trials']} trials, {s['concurrency']} concurrent): wall {s['wall_s']:.1f} s (Ray "
              f"start-up and data loading included; {s['trials_span_s']:.1f} s from the first trial's start to the last "
              f"one's end) against {s['train_s_sum']:.1f} s of training / {s['concurrency']}: ratio {s['ratio']:.2f} "
              f"({s['ratio_span']:.2f} over the trials' span).", "",
              "The 1.10 target is met by: " + (", ".join(met) or "no family") + "; missed by: "
              + (", ".join(missed) or "no family") + "."]
    return "\n".join(lines)


def search_efficiency() -> str:
    """benchmarks/README.md, section 3: every strategy at greedy's budget (benchmarks/search.py's own table)."""
    from benchmarks.search import load_runs, render as render_search, summarize

    runs = load_runs()
    if runs.empty:
        raise RenderError(f"{RESULTS / 'search_runs.parquet'} is missing; run python -m benchmarks.search.")
    over = runs[runs["epochs_spent"] > 1.05 * runs["greedy_epochs"]]
    note = []
    if len(over):
        note = ["", "", f"**Stale:** {len(over)} of these {len(runs)} runs spent more than 1.05x greedy's B (up to "
                f"{(over['epochs_spent'] / over['greedy_epochs']).max():.2f}x): they were measured "
                f"({', '.join(sorted(set(over['measured'].astype(str))))}) before the epoch budget's counter was fixed, "
                "and are to be re-measured."]
    return render_search(summarize(runs), runs) + "\n".join(note)


def gpu_memory() -> str:
    """benchmarks/README.md, findings: GPU memory per trial as measured on the H100 (gpu-h100.json's train rows)."""
    gpu = _load("gpu-h100.json")
    rows = gpu["train"]["rows"]
    parts = []
    for width in sorted({r["width"] for r in rows}):
        at = [r for r in rows if r["width"] == width]
        parts.append(f"c = {width}: {min(r['peak_mb'] for r in at) / 1024:.1f}-{max(r['peak_mb'] for r in at) / 1024:.1f} GB "
                     f"allocated at peak, up to {max(r['reserved_mb'] for r in at) / 1024:.1f} GB reserved")
    return (f"Measured on the {gpu['env']['device']} ({gpu['train'].get('_measured_at', '?')[:10]}, `python -m "
            "benchmarks.gpu --only train`, batch 16), per trial, every family and variant: " + "; ".join(parts)
            + "; each process holds its CUDA context on top of what torch reserves.")


def _changed(change: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in change.items()) or "study defaults"


def _row_measured(rows: list[dict]) -> str:
    seen = sorted({_measured(r["provenance"]) for r in rows if r.get("provenance")})
    undated = sum(1 for r in rows if not r.get("provenance"))
    return "; ".join(seen + ([f"{undated} rows from before results recorded their commit"] if undated else []))


def learning_table() -> str:
    """benchmarks/README.md, section 7: each family once at its study defaults (benchmarks/learning.py)."""
    results = _load("learning.json")
    base = results["baselines"]
    lines = [f"`python -m benchmarks.learning` ({_row_measured(results['families'])}; `results/learning.json`): "
             f"each family at its study file's defaults, `{results['preset']}`-preset size, against the all-black map "
             f"({base['black_l1']:.4f}) and the mean training map ({base['mean_map_l1']:.4f}) on the same val split:", "",
             "| family | changed | epochs | best val L1 | x all-black | x mean map | remembered (x black) | "
             "falsely remembered (x black) | rho | seconds |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["families"]:
        lines.append(f"| {r['family']} | {_changed(r['changed'])} | {r['epochs']} | {r['best_val_l1']:.4f} | "
                     f"{r['x_black']:.2f} | {r['x_mean_map']:.2f} | {r['val_l1_remembered']:.4f} "
                     f"({r['x_black_remembered']:.2f}) | {r['val_l1_falsely_remembered']:.4f} "
                     f"({r['x_black_falsely_remembered']:.2f}) | {r['val_spearman']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def seeds_table() -> str:
    """benchmarks/README.md, section 9: one configuration's seed-to-seed noise (benchmarks/seeds.py), and greedy's margins."""
    from trainables.families import find_family

    results = _load("seeds.json")
    rows = results["families"]
    lines = [f"`python -m benchmarks.seeds` ({_row_measured(rows)}; `results/seeds.json`): each configuration at "
             f"the `{results['preset']}` preset's size, seeds {rows[0]['seeds'][0]} to {rows[0]['seeds'][-1]}, best val L1 "
             "over the epochs:", "",
             "| family | configuration | epochs | mean | sd | sd / mean | min | max | margin (sqrt 2 x sd/mean) | per seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['family']} | {_changed(r['changed'])} | {r['epochs']} | {r['mean']:.4f} | {r['sd']:.4f} | "
                     f"{r['cv']:.1%} | {r['min']:.4f} | {r['max']:.4f} | {r['cv'] * 2 ** 0.5:.1%} | "
                     + " ".join(f"{v:.4f}" for v in r["best_val_l1"]) + " |")
    lines.append("")
    for family in dict.fromkeys(r["family"] for r in rows):
        noise = find_family(family).noise
        match = [r for r in rows if r["family"] == family and abs(r["cv"] - noise) < 0.0005]
        source = (f"the row {_changed(match[0]['changed'])}" if match
                  else "**no row of this table** (re-measure, or update the figure)")
        lines.append(f"- {family}: greedy's noise figure (`{find_family(family).__name__}.noise`) is {noise:.1%}, "
                     f"margin {noise * 2 ** 0.5:.1%}: {source}.")
    return "\n".join(lines)


def main_job_time() -> str:
    """README.md's opening: how long the main job (greedy over the GAN, cpu preset without a GPU) took."""
    case = _load("cpu_search.json")["gan-synthetic"]
    gpu = _load("gpu-h100.json")
    search = gpu["search"]
    blocks = len({row["block"] for row in search["trials_table"]})
    s = case["summary"]
    final = s.get("final") or {}
    runs = len(final.get("configurations", [])) * len(final.get("seeds", []))
    return (f"(Measured on {_measured(case['provenance'])}, without a GPU: {case['wall_seconds'] / 60:.0f} minutes, "
            f"{s['trials']} trials of search, then the final stage, the top {len(final.get('configurations', []))} "
            f"configurations re-trained with {len(final.get('seeds', []))} new seeds each ({runs} runs) and measured on "
            "the test split; plus about 2 minutes of install. Its first lines state an estimate measured on your "
            "machine, and every finished trial's line says how many trials are done and how long is left. With a GPU "
            f"it runs the report's full budget instead: on one {gpu['env']['device']} ({search['_measured_at'][:10]}, "
            f"an earlier study file), {blocks} greedy blocks ({search['trials']} trials) took "
            f"{search['total_s'] / 60:.0f} minutes before the lease ran out, where the report spent about 3 days.)")


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "cpu-search": ("benchmarks/README.md", cpu_search_table),
    "unlearnable": ("README.md", unlearnable_run),
    "strategies": ("README.md", strategy_comparison),
    "preset-times": ("README.md", preset_times),
    "gpu-floor": ("benchmarks/README.md", gpu_floor),
    "overhead": ("benchmarks/README.md", overhead_table),
    "search-efficiency": ("benchmarks/README.md", search_efficiency),
    "gpu-memory": ("benchmarks/README.md", gpu_memory),
    "learning": ("benchmarks/README.md", learning_table),
    "seeds": ("benchmarks/README.md", seeds_table),
    "main-job": ("README.md", main_job_time),
}


class RenderError(Exception):
    """A result file or a marker is missing; the message says which."""


def render_doc(text: str, doc: str) -> str:
    for name, (where, make) in BLOCKS.items():
        if where != doc:
            continue
        pattern = re.compile(rf"(<!-- rendered: {re.escape(name)} -->\n)(.*?)(<!-- /rendered: {re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise RenderError(f"{doc} has no markers for block {name!r}: add '<!-- rendered: {name} -->' and "
                              f"'<!-- /rendered: {name} -->' where it belongs.")
        body = make().rstrip("\n") + "\n"
        text = pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc is out of date")
    args = parser.parse_args(argv)
    stale = []
    try:
        for doc in sorted({where for where, _ in BLOCKS.values()}):
            path = ROOT / doc
            text = path.read_text()
            rendered = render_doc(text, doc)
            if rendered != text:
                stale.append(doc)
                if not args.check:
                    path.write_text(rendered)
    except RenderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"error: rendered blocks in {', '.join(stale)} differ from benchmarks/results/; "
              "run python -m benchmarks.render and commit the result.", file=sys.stderr)
        return 1
    print("the rendered blocks agree with benchmarks/results/" if args.check
          else "rendered: " + (", ".join(stale) or "nothing changed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
