"""Blocks from the bucket benchmarks: ``benchmarks/bucket.py`` (bucket.json) and ``bucket_search.py`` (bucket_search.json)."""

from __future__ import annotations

from benchmarks.tables.common import load, measured


def bucket_cost() -> str:
    """benchmarks/README.md, section 11: a trial's checkpoints and result flushes per epoch,
    local disk against a local S3 server (benchmarks/bucket.py)."""
    r = load("bucket.json")
    lines = [f"Measured {measured(r['provenance'])}, `{r['provenance']['command']}` (`benchmarks/results/bucket.json`): "
             f"one autoencoder trial at its study defaults (widths / {r['trial']['width_divisor']}, a `latest.pt` of "
             f"{r['rows'][0]['latest_pt_bytes'] / 1e6:.1f} MB), {r['rows'][0]['epochs']} epochs, the results flushed "
             "after every epoch. Per epoch:", "",
             "| store | checkpoints: MB | checkpoints: operations | checkpoints: s | result flushes: kB | "
             "result flushes: operations | result flushes: s | requests the server answered |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        c, f = row["checkpoints"], row["result_flushes"]
        ops = "; ".join(f"{k} {v:.2f}" for k, v in c["operations_per_epoch"].items())
        fops = "; ".join(f"{k} {v:.2f}" for k, v in f["operations_per_epoch"].items())
        server = ", ".join(f"{k} {v:.2f}" for k, v in (row.get("server_requests_per_epoch") or {}).items()) or "-"
        lines.append(f"| {row['store']} | {c['bytes_per_epoch'] / 1e6:.2f} | {ops} | {c['seconds_per_epoch']:.3f} | "
                     f"{f['bytes_per_epoch'] / 1e3:.1f} | {fops} | {f['seconds_per_epoch']:.3f} | {server} |")
    lines += ["", "Operations are what the code asked of the store (`head+copy` checks `latest.pt` and copies it to "
              "`previous.pt` on the server); the server's requests include the multipart uploads' own (POST to "
              "start and complete one). Checkpoints are paced to at most a tenth of the trial's time, so where a "
              "write costs more, fewer epochs get one. The local server's seconds are not S3's: it answers on "
              "loopback, without TLS or the service's own latency. On S3 the requests are what is billed; a search "
              "flushes its results at most every few seconds (`flush_seconds`), not after every epoch as here."]
    return "\n".join(lines)


def bucket_search() -> str:
    """benchmarks/README.md, section 11: a cpu-preset search in a bucket, killed twice, against a local folder."""
    r = load("bucket_search.json")
    c, runs = r["comparison"], r["runs"]
    bucket = runs["bucket"]
    return "\n".join([
        f"Measured {measured(r['provenance'])}, `{r['provenance']['command']}` (`results/bucket_search.json`):", "",
        "```", f"{r['commands']['local']}", f"{r['commands']['bucket']}", "```", "",
        "| study | driver runs (exit codes) | seconds | trials | epoch rows | best val L1 |", "| --- | --- | --- | --- | --- | --- |",
        f"| local folder | 1 ({runs['local'][0]['returncode']}) | {runs['local'][0]['seconds']:.0f} | {c['trials']} | "
        f"{c['epoch_rows']} | {c['best_val_l1'][0]:.4f} |",
        f"| bucket, SIGKILLed {r['kills']} times | {len(bucket)} ({', '.join(str(b['returncode']) for b in bucket)}) | "
        f"{sum(b['seconds'] for b in bucket):.0f} | {c['trials_bucket']} | {c['epoch_rows_bucket']} | {c['best_val_l1'][1]:.4f} |",
        "", f"Trials (id, status, epochs, best val L1): **{'equal' if c['trials_equal'] else 'different'}**; every "
        f"epoch's val L1: **{'equal' if c['epoch_val_l1_equal'] else 'different'}** (bit for bit). An exit code of -9 "
        "is a SIGKILL; each run after one resumed the study from the bucket."])
