"""Blocks from the CPU benchmarks: ``benchmarks/run.py`` (quick.json), ``learning.py``, ``seeds.py`` and ``faults.py``."""

from __future__ import annotations

from benchmarks.tables.common import (RenderError, changed, descends, load, measured, row_measured,
                                      section_measured)

ESTIMATE_IN_DRIVER = "83bb9e8"  # a local search's estimate moved into the driver: one worker process fewer per search


def overhead_table() -> str:
    """benchmarks/README.md, section 1: our epoch under Ray Tune against a bare PyTorch loop (benchmarks/overhead.py)."""
    results = load("quick.json")
    over = results["overhead"]
    target = 1.05
    if "repeats" not in over:
        raise RenderError("quick.json's overhead section predates the paired repeats: run "
                          "python -m benchmarks.run --quick --only overhead")
    lines = [f"Measured {section_measured(results, 'overhead')}, `python -m benchmarks.run --quick --only overhead` "
             f"({over['repeats']} repeats of {over['epochs']} epochs each, widths / {over['width_divisor']}, "
             f"{over['threads']} thread; seconds per epoch, medians over the repeats; the ratio is the mean of the "
             "repeats' ratios with its 95% t-interval):", "",
             "| family | ours under Ray Tune (s) | bare PyTorch loop (s) | ratio | training: ours / bare (s) | "
             "evaluation: ours / bare (s) | Ray's result files per epoch |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    met, missed, open_ = [], [], []
    for family, row in over["families"].items():
        lines.append(f"| {family} | {row['ours_s']:.2f} | {row['bare_s']:.2f} | {row['ratio']:.3f} "
                     f"[{row['ratio_low']:.3f}, {row['ratio_high']:.3f}] | {row['ours_train_s']:.2f} / "
                     f"{row['bare_train_s']:.2f} | {row['ours_eval_s']:.2f} / {row['bare_eval_s']:.2f} | "
                     f"{row['ray_logs_ms']:.2f} ms ({row['ray_logs_fraction']:.2%}) |")
        label = f"{family} {row['ratio']:.3f} [{row['ratio_low']:.3f}, {row['ratio_high']:.3f}]"
        (met if row["ratio_high"] <= target else missed if row["ratio_low"] > target else open_).append(label)
    s = over["search"]
    lines += ["", f"Whole search ({s['trials']} trials, {s['concurrency']} concurrent): wall {s['wall_s']:.1f} s (Ray "
              f"start-up and data loading included; {s['trials_span_s']:.1f} s from the first trial's start to the last "
              f"one's end) against {s['train_s_sum']:.1f} s of training / {s['concurrency']}: ratio {s['ratio']:.2f} "
              f"({s['ratio_span']:.2f} over the trials' span)."
              + ("" if descends(_commit(results, "overhead"), ESTIMATE_IN_DRIVER) else
                 f" **Stale:** this whole search was measured before commit {ESTIMATE_IN_DRIVER}, where a local "
                 "search's first estimate moved into the driver (one worker process fewer); the per-epoch table above "
                 "is not affected. `python -m benchmarks.run --quick --only overhead` re-measures both."), "",
              f"The {target:.2f} target (the whole interval at or under it) is met by: " + (", ".join(met) or "no family")
              + "; missed (the whole interval over it) by: " + (", ".join(missed) or "no family")
              + "; not resolved by: " + (", ".join(open_) or "no family") + "."]
    return "\n".join(lines)


def learning_table() -> str:
    """benchmarks/README.md, section 7: each family once at its study defaults (benchmarks/learning.py)."""
    results = load("learning.json")
    base = results["baselines"]
    lines = [f"`python -m benchmarks.learning` ({row_measured(results['families'])}; `results/learning.json`): "
             f"each family at its study file's defaults, `{results['preset']}`-preset size, against the all-black map "
             f"({base['black_l1']:.4f}) and the mean training map ({base['mean_map_l1']:.4f}) on the same val split:", "",
             "| family | changed | epochs | best val L1 | x all-black | x mean map | remembered (x black) | "
             "falsely remembered (x black) | rho | seconds |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["families"]:
        lines.append(f"| {r['family']} | {changed(r['changed'])} | {r['epochs']} | {r['best_val_l1']:.4f} | "
                     f"{r['x_black']:.2f} | {r['x_mean_map']:.2f} | {r['val_l1_remembered']:.4f} "
                     f"({r['x_black_remembered']:.2f}) | {r['val_l1_falsely_remembered']:.4f} "
                     f"({r['x_black_falsely_remembered']:.2f}) | {r['val_spearman']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def seeds_table() -> str:
    """benchmarks/README.md, section 9: one configuration's seed-to-seed noise (benchmarks/seeds.py), and greedy's margins."""
    from trainables.families import find_family

    results = load("seeds.json")
    rows = results["families"]
    lines = [f"`python -m benchmarks.seeds` ({row_measured(rows)}; `results/seeds.json`): each configuration at "
             f"the `{results['preset']}` preset's size, seeds {rows[0]['seeds'][0]} to {rows[0]['seeds'][-1]}, best val L1 "
             "over the epochs:", "",
             "| family | configuration | epochs | mean | sd | sd / mean | min | max | margin (sqrt 2 x sd/mean) | per seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['family']} | {changed(r['changed'])} | {r['epochs']} | {r['mean']:.4f} | {r['sd']:.4f} | "
                     f"{r['cv']:.1%} | {r['min']:.4f} | {r['max']:.4f} | {r['cv'] * 2 ** 0.5:.1%} | "
                     + " ".join(f"{v:.4f}" for v in r["best_val_l1"]) + " |")
    lines.append("")
    for family in dict.fromkeys(r["family"] for r in rows):
        noise = find_family(family).noise
        match = [r for r in rows if r["family"] == family and abs(r["cv"] - noise) < 0.0005]
        source = (f"the row {changed(match[0]['changed'])}" if match
                  else "**no row of this table** (re-measure, or update the figure)")
        lines.append(f"- {family}: greedy's noise figure (`{find_family(family).__name__}.noise`) is {noise:.1%}, "
                     f"margin {noise * 2 ** 0.5:.1%}: {source}.")
    return "\n".join(lines)


def _commit(results: dict, section: str) -> str:
    """The commit that measured a section of quick.json ('' before results recorded it)."""
    prov = (results.get("section_provenance") or {}).get(section) or results.get("provenance") or {}
    return prov.get("commit") or ""


def _quick_section(section: str) -> tuple[dict, str]:
    results = load("quick.json")
    if section not in results:
        raise RenderError(f"results/quick.json has no {section!r} section; run python -m benchmarks.run --quick --only {section}.")
    return results[section], (f"Measured {section_measured(results, section)}, "
                              f"`python -m benchmarks.run{' --quick' if results.get('quick') else ''} --only {section}`")


def datapath_table() -> str:
    """benchmarks/README.md, section 2: resident tensors against a DataLoader decoding files every epoch."""
    d, made = _quick_section("datapath")
    return "\n".join([
        f"{made} (one training epoch over {d['images']} pairs, {d['model']}, median):", "",
        "| data path | seconds per epoch | against resident |", "| --- | --- | --- |",
        f"| decoded once, resident uint8 tensors (ours) | {d['resident_s']:.2f} | 1.00 |",
        f"| DataLoader decoding the 64x64 PNG files every epoch | {d['files_s']:.2f} | {d['ratio_files_over_resident']:.2f} |",
        f"| DataLoader decoding and resizing 384x384 JPEGs every epoch (a real copy's size) | {d['jpeg384_s']:.2f} | "
        f"{d['ratio_jpeg384_over_resident']:.2f} |"])


def sampling_table() -> str:
    """benchmarks/README.md, section 4: DDIM with k steps against full ancestral sampling, one trained model."""
    s, made = _quick_section("sampling")
    rows = s["rows"]
    trained = s.get("trained") or {"prediction": "x0", "denoise_loss": "mse (before the study default was measured)"}
    lines = [f"{made}: one diffusion model trained with the study's defaults ("
             + ", ".join(f"{k} {v}" for k, v in trained.items()) + f"), {s['trained_steps']} diffusion steps, "
             f"{s['width']}; its first {s['images']} validation images sampled each way (seed 0):", "",
             "| sampler | steps | seconds | s/image | val L1 | against ancestral |", "| --- | --- | --- | --- | --- | --- |"]
    full = next((r for r in rows if r["sampler"] == "ancestral"), None)
    for r in rows:
        against = "-" if full is None else f"{r['val_l1'] / full['val_l1']:.2f}x L1, {r['seconds'] / full['seconds']:.3f}x time"
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['seconds']:.1f} | {r['seconds_per_image']:.3f} | "
                     f"{r['val_l1']:.4f} | {against} |")
    return "\n".join(lines)


def memory_table() -> str:
    """benchmarks/README.md, section 5: what a cpu-preset search holds, and the CPU-side GPU estimate."""
    m, made = _quick_section("memory")
    lines = [f"{made} (`cpu` preset, 2 trials at once):", "",
             "| family | driver peak RSS (MB) | trial peak RSS (MB) | whole search (MB) | "
             "GPU per trial, estimate c=64 (MB) | c=100 (MB) |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {f} | {v['driver_peak_rss_mb']:.0f} | {v['trial_peak_rss_mb']:.0f} | {v['whole_search_mb']:.0f} | "
              f"{v['gpu_estimate_mb_c64']:.0f} | {v['gpu_estimate_mb_c100']:.0f} |" for f, v in m["families"].items()]
    whole = [v["whole_search_mb"] for v in m["families"].values()]
    return "\n".join(lines + ["", f"Decoded dataset: {m['dataset_mb']:.0f} MB, put in Ray's object store once per search "
                              "and read zero-copy by every trial on the node. A whole search took "
                              f"{min(whole) / 1024:.1f}-{max(whole) / 1024:.1f} GB of the machine ({m['note']})."])


def scaling_table() -> str:
    """benchmarks/README.md, section 6: trials per hour with 1 and 2 trials at once on the CPU."""
    s, made = _quick_section("scaling")
    return "\n".join([f"{made}:", "", "| concurrent trials | trials | wall s | trials/hour |", "| --- | --- | --- | --- |",
                      *(f"| {n} | {s[f'concurrent_{n}']['trials']} | {s[f'concurrent_{n}']['wall_s']:.0f} | "
                        f"{s[f'concurrent_{n}']['trials_per_hour']:.0f} |" for n in (1, 2)),
                      "", f"Speed-up {s['speedup']:.2f}x from 1 to 2 concurrent trials."])


def faults_table() -> str:
    """benchmarks/README.md, section 8: kills at any moment, against the uninterrupted run (benchmarks/faults.py)."""
    results = load("faults.json")
    prov = results.get("provenance")
    lines = [f"Measured {measured(prov) if prov else 'before results recorded their commit'}, "
             f"`{prov['command'] if prov else 'python -m benchmarks.faults'}` (`results/faults.json`, kill plan seed "
             f"{results['seed']}, {results['kills']} kills planned per study):", "",
             "| study | kills survived | worker killed | latest.pt cut, fallback said | trials lost | trials repeated | "
             "epochs trained twice (of those reported) | at most, as paced | equal to uninterrupted | wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    from benchmarks.faults import KINDS

    kinds: dict[str, int] = {}
    for r in results["results"]:
        c = r["comparison"]
        args = KINDS.get(r.get("kind", r["strategy"]), KINDS["greedy"])
        epochs = int(args[args.index("--epochs") + 1])  # what the cut latest.pt can cost at most: a trial's epochs
        allowed = 2 * r["kills_survived"] + epochs  # per kill: the epoch being written and the next; the cut file
        lines.append(f"| {r['strategy']} ({c['trials']} trials, {c['epoch_rows'][0]} epoch rows) | {r['kills_survived']} | "
                     f"{r['worker_kills']} | {1 if r.get('truncated') else 0}, {len(r['checkpoint_notices'])} | "
                     f"{r['trials_lost']} | {r['trials_repeated']} | {r['epochs_repeated']} ({r['epochs_reported']}) | "
                     f"{allowed} | {'yes' if r['equal'] else '**no**'} | {r['seconds'] / 60:.0f} min |")
        for run in r["runs"]:
            kind = (run["crash_at"] or "").split(":")[0] or "timer"
            if run["killed"]:
                kinds[kind] = kinds.get(kind, 0) + 1
    notices = [n.split(" (")[0] + " ... " + n.rsplit(";", 1)[-1].strip() for r in results["results"]
               for n in r["checkpoint_notices"]]
    lines += ["", "Kills by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])) + "."]
    if notices:
        lines.append("The fallback lines: " + "; ".join(f"`{n}`" for n in notices) + ".")
    return "\n".join(lines)


def faults_summary() -> str:
    """docs/reliability.md: per kind of study, the kills it survived and whether it ended equal (results/faults.json)."""
    results = load("faults.json")
    prov = results.get("provenance")
    lines = [f"Measured on {measured(prov)} (`{prov['command']}`; the whole table is section 8 of "
             "`benchmarks/README.md`):", ""]
    for r in results["results"]:
        c = r["comparison"]
        how = "equal to the uninterrupted run" if r["equal"] else (
            "**not equal** to the uninterrupted run: "
            + ", ".join(part for part, ok in (("its trials", c["trials_equal"]), ("its epoch curves", c["epoch_curves_equal"]))
                        if not ok) + f" differ ({c['epoch_rows'][1]} epoch rows against {c['epoch_rows'][0]})")
        lines.append(f"- {r.get('kind', r['strategy'])}: {r['kills_survived']} kills survived, {r['trials_lost']} trials "
                     f"lost, {r['trials_repeated']} repeated; {how}.")
    return "\n".join(lines)


def test_time() -> str:
    """README.md's opening: how long the test command took, as CI runs it (benchmarks/suite.py)."""
    r = load("tests.json")
    counts = ", ".join(f"{n} {kind}" for kind, n in r["counts"].items())
    slowest = r["slowest"][0] if r["slowest"] else None
    return (f"About {r['wall_seconds'] / 60:.0f} minutes on {r['provenance']['machine']['cores']} cores, install "
            f"included: {counts} in {r['pytest_seconds'] / 60:.1f} minutes of pytest (`.ci/run` on a clean clone of "
            f"{measured(r['provenance'])}, `{r['provenance']['command']}`); pytest prints its 15 slowest tests"
            + (f", the slowest {slowest['test']} at {slowest['seconds']:.0f} s." if slowest else ".")
            + (f" {r['provenance']['reconstructed']}" if r["provenance"].get("reconstructed") else ""))



def startup_table() -> str:
    """benchmarks/README.md: how long the command takes to answer before a search starts (results/startup.json)."""
    result = load("startup.json")
    lines = [f"Measured on {measured(result['provenance'])} (`python -m benchmarks.startup`, a fresh interpreter per "
             f"run, {result['cases'][0]['repeats']} runs each; target {result['target_s']:g} s):", "",
             "| command | median s | slowest s | within target |", "| --- | --- | --- | --- |"]
    lines += [f"| `python -m search.run {' '.join(r['argv'])}` ({r['case']}) | {r['median_s']:.3f} | {r['max_s']:.3f} | "
              f"{'yes' if r['median_s'] <= result['target_s'] else 'no'} |" for r in result["cases"]]
    return "\n".join(lines)


def budget_table() -> str:
    """benchmarks/README.md section 3d: what --budget-epochs spent, per strategy and trials at once (results/budget.json)."""
    result = load("budget.json")
    rows = result["rows"]
    met = sum(1 for r in rows if r["ratio"] <= result["target"])
    lines = [f"Measured on {measured(result['provenance'])} (`{result['provenance']['command']}`; the autoencoder, "
             f"smoke preset, {rows[0]['epochs_per_trial']}-epoch trials, budget B = {rows[0]['budget']} epochs; "
             f"target: at most {result['target']:g} B). {met} of {len(rows)} cases within the target.", "",
             "| strategy | trials at once | trials | epochs spent | x B | unspent | the search's last line on it |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['strategy']} | {r['concurrency']} | {r['trials']} | {r['spent']} | {r['ratio']:.2f} | {r['unspent']} | "
              f"{r['said'] or '-'} |" for r in rows]
    return "\n".join(lines)


def bad_inputs_table() -> str:
    """docs/reliability.md: every bad-input case and the line the command answered it with (results/bad_inputs.json)."""
    result = load("bad_inputs.json")
    rows = result["cases"]
    ok = sum(1 for r in rows if r["exit"] == 2 and r["lines"] == 1 and not r["traceback"] and r["wrote_nothing"]
             and r["says_expected"])
    lines = [f"{ok} of {len(rows)} cases refused with one line, exit 2, no traceback and nothing written "
             f"({measured(result['provenance'])}, `python -m benchmarks.bad_inputs`).", "",
             "| kind | bad input | what the command says | exit |", "| --- | --- | --- | --- |"]
    for r in rows:
        message = r["message"].replace("|", "\\|")
        for long_path in ("/tmp/",):
            if long_path in message:
                message = " ".join(w if not w.startswith(long_path) else "…/" + w.rsplit("/", 1)[-1] for w in message.split())
        lines.append(f"| {r['kind']} | {r['what']} | {message} | {r['exit']} |")
    return "\n".join(lines)


def levers_table() -> str:
    """benchmarks/README.md, section 13: the speed levers on the CPU, paired against the default (benchmarks/levers.py)."""
    results = load("levers.json")
    lines = [f"`python -m benchmarks.levers` ({measured(results['provenance'])}; `results/levers.json`): "
             f"{results['repeats']} repeats, {results['epochs']} epochs a cell (the first left out), "
             f"{results['n_train']} training pairs. Speed-up: the variant's trial-epochs per second over its family's "
             "default cell in the same repeat; mean and 95% interval over repeats.", "",
             "| lever | speed-up | faster? |", "| --- | --- | --- |"]
    for row in results["levers"]:
        s = row["speedup"]
        half = s.get("ci95")
        if "projected" in row["variant"]:
            verdict = "projected from the phases, not a measured pair"
        elif half is None:
            verdict = "one repeat: no interval"
        elif s["mean"] - half > 1.0:
            verdict = "yes"
        elif s["mean"] + half < 1.0:
            verdict = "**no**, slower"
        else:
            verdict = "not resolved"
        lines.append(f"| {row['variant']} | {s['mean']:.3f}x" + (f" ± {half:.3f}" if half is not None else "")
                     + f" | {verdict} |")
    base = {c["cell"]: c for c in results["cells"] if c["repeat"] == 0}
    lines += ["", "The default cells' epochs (repeat 0, seconds: steps, measuring, checkpoint snapshot): "
              + "; ".join(f"{name} {c['train_seconds']:.2f}, {c['eval_seconds']:.2f}, {c['checkpoint_seconds']:.3f}"
                          for name, c in base.items() if name in ("gan", "autoencoder")) + "."]
    return "\n".join(lines)


def lever_quality_table() -> str:
    """benchmarks/README.md, section 13: each lever on by default, its test L1 paired against it off
    (benchmarks/lever_quality.py)."""
    results = load("lever_quality.json")
    lines = [f"`python -m benchmarks.lever_quality` ({measured(results['provenance'])}; `results/lever_quality.json`): "
             "each lever the code turns on by default on the CPU, on the main job's selected configuration at the "
             "`cpu` preset's size, trained as the final stage trains it with the lever and without it, two runs at "
             "once, paired by seed. Test L1: mean and 95% interval over seeds; the difference is on minus off.", "",
             "| lever | configuration | seeds | test L1 on | test L1 off | on minus off, paired | speed-up, paired "
             "| stays on? |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def cell(s: dict, digits: int = 4, sign: str = "", unit: str = "") -> str:
        return (f"{s['mean']:{sign}.{digits}f}{unit}"
                + (f" ± {s['ci95']:.{digits}f}" if s.get("ci95") is not None else ""))

    for lever in results["levers"]:
        d, speed = lever["difference"], lever["speedup"]
        if d.get("ci95") is None:
            verdict = "one seed: no interval"
        elif d["mean"] - d["ci95"] > 0:
            verdict = "**no**: test L1 higher with it"
        elif speed.get("ci95") is not None and speed["mean"] + speed["ci95"] < 1.0:
            verdict = "**no**: slower"
        else:
            verdict = "yes: test L1 inside the paired interval" + (
                "" if d["mean"] + d["ci95"] >= 0 else " (lower with it)")
        lines.append(f"| {lever['family']} {lever['lever']} | {lever['configuration_source']} | {d['n']} "
                     f"| {cell(lever['test_l1_on'])} | {cell(lever['test_l1_off'])} | {cell(d, sign='+')} "
                     f"| {cell(speed, 3, unit='x')} | {verdict} |")
    return "\n".join(lines)
