"""Command line: run or continue a hyperparameter search.

    python -m search.run --strategy greedy --model gan
    python -m search.run --strategy tpe --model autoencoder --samples 30 --study ae-tpe
    python -m search.run --strategy greedy --model diffusion --address 10.0.0.5:6379 --preset thesis

Re-running the same command (same --study, default ``<strategy>-<model>``) continues
the study. Errors in the input print one line on stderr and exit with status 2;
an interrupted search (Ctrl-C, SIGTERM) exits with 130 and resumes when re-run.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

# Nothing heavy here: --help and a refused option answer before torch, Ray or Optuna are imported (main imports
# the driver once the options pass).
from search.runner.options import PRESETS, SCHEDULERS, STRATEGIES, SearchOptions, check
from trainables.families import FAMILIES


def _gpus(value: str) -> float | str:
    """A number of GPUs, or the word as given (``auto``; anything else is refused by the driver, in one line)."""
    try:
        return float(value)
    except ValueError:
        return value


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` and docs/options.md's table show an option's default: not for a required option, a switch,
    or an option whose help says what happens without it (no value by default)."""
    return not (action.required or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS)


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: ...)" only where :func:`shows_default` says so."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return super()._get_help_string(action) if shows_default(action) else action.help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=_Defaults)
    parser.add_argument("--strategy", required=True, help=f"one of {STRATEGIES.choices()}")
    parser.add_argument("--model", required=True, help=f"one of {FAMILIES.choices()}")
    parser.add_argument("--study", default=None, help="study name: its folder under --runs-dir (default <strategy>-<model>)")
    parser.add_argument("--space", dest="space_file", default=None,
                        help="study file (TOML) with the search space (default studies/<model>.toml)")
    _data_options(parser)
    parser.add_argument("--preset", default=None,
                        help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items())
                        + " (default: thesis with GPUs, cpu without)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (overrides the preset)")
    parser.add_argument("--samples", type=int, default=None,
                        help="Optuna strategies: total trials of the study (overrides the preset; none with --budget-epochs)")
    parser.add_argument("--budget-epochs", type=int, default=None,
                        help="stop starting trials once the study's trials have trained this many epochs in all")
    parser.add_argument("--domain", default=None,
                        help="Optuna strategies: grid (the study's values, the space greedy walks; the default) or ranges "
                             "(its continuous ranges)")
    parser.add_argument("--gpus-per-trial", type=_gpus, default=None,
                        help="GPUs per trial; fractions share a GPU; auto: measure one trial alone on a GPU and share "
                             "each GPU between as many trials as fit in its memory and its idle time "
                             "(default: auto with GPUs, 0 without)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (a trial's threads)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once (default: what resources allow)")
    parser.add_argument("--address", default=None,
                        help="an existing Ray cluster (host:port; auto: the one RAY_ADDRESS or `ray start` on this "
                             "machine names; local: a Ray of the search's own); default: RAY_ADDRESS, else the Ray "
                             "`ray start` left on this machine, else a local one")
    _store_options(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="the study's seed: the samplers', the trials' and the data split's")
    parser.add_argument("--resume", action="store_true", help="continue an existing study (refuse to start a new one)")
    parser.add_argument("--scheduler", default="asha", help=f"one of {SCHEDULERS.choices()}")
    parser.add_argument("--grace-period", type=int, default=None, help="ASHA: epochs before a trial can be stopped")
    parser.add_argument("--reduction-factor", type=int, default=None, help="ASHA: keep 1/factor of trials at each rung")
    parser.add_argument("--max-failures", type=int, default=1, help="retries of a trial whose process fails")
    parser.add_argument("--final-top-k", type=int, default=3,
                        help="at the end, re-train the best K configurations over seeds and measure them on the test split (0: skip)")
    parser.add_argument("--final-seeds", type=int, default=3, help="seeds per re-trained configuration")
    parser.add_argument("--precision", default="auto",
                        help="CUDA training precision: auto (bf16, fp16 where bf16 is missing), bf16, fp16 or fp32 "
                             "(the CPU always trains in fp32)")
    parser.add_argument("--channels-last", default="auto", help="networks in channels-last memory format (auto: on with CUDA, and on the CPU for a family measured there, the GAN; on; off)")
    parser.add_argument("--compile", default="auto", help="torch.compile the networks (auto: off; on, the CPU too; off)")
    parser.add_argument("--cuda-graphs", default="auto",
                        help="CUDA: replay each training step as one CUDA graph (auto|on|off; auto: on, except with fp16's loss scaler)")
    parser.add_argument("--mlflow", default=None, metavar="URI",
                        help="log the study to this MLflow tracking server: the study as a parent run, each trial as a "
                             "nested run (default: MLFLOW_TRACKING_URI when set; pip install -e '.[mlflow]')")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray's own progress tables, worker logs and errored trials' tracebacks")
    _strategy_options(parser)
    return parser


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=None, help="Optuna storage URL, which also holds the study's lease "
                        "(default: sqlite file optuna.db in the study folder; a database URL for a study in a bucket)")
    parser.add_argument("--store-retry", type=float, default=None, metavar="SECONDS",
                        help="how long a bucket or database that stops answering is waited for before the search "
                             "stops (it resumes when re-run; default 300)")
    parser.add_argument("--runs-dir", default="runs",
                        help="folder holding the study folders, or a bucket URI (s3://BUCKET/PREFIX[?endpoint_override=...])")


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="dataset folder or bucket URI (default: the embedded synthetic VMS set)")
    parser.add_argument("--val-share", type=float, default=None,
                        help="a dataset without a test split: its val split becomes the test split, read once by the "
                             "final stage, and the search validates on this seeded share of its training pairs "
                             "(default 0.2, or what the study recorded; 0: keep the val split, no test numbers)")
    parser.add_argument("--size", type=int, default=64, help="working resolution")


def _strategy_options(parser: argparse.ArgumentParser) -> None:
    """Each strategy's own options (Strategy.options), in a group of the strategies that take them."""
    takers: dict[str, list[str]] = {}
    found: dict[str, Any] = {}
    for name, strategy in STRATEGIES.items():
        for option in strategy.options:
            takers.setdefault(option.flag, []).append(name)
            found.setdefault(option.flag, option)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag, option in found.items():
        title = "/".join(takers[flag])
        group = groups.setdefault(title, parser.add_argument_group(f"{title} options"))
        group.add_argument(flag, dest=option.dest, type=option.type, default=argparse.SUPPRESS, metavar=option.metavar,
                           help=option.help + (f" (default: {option.default})" if option.default is not None else ""))


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    raise KeyboardInterrupt


INTERRUPTED = "interrupted: finished trials are saved; re-run the same command to resume."
INTERRUPT_S = 8.0  # from SIGTERM or Ctrl-C to the exit, at most (search.run's own answer takes a few seconds)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what the watch below waits for


def _watch_interrupts() -> Callable[[], None]:
    """Exit 130 at most INTERRUPT_S after a SIGTERM or Ctrl-C, whatever the driver is doing; returns the call that
    stands the watch down (main's return: the teardown has its own watch, :func:`_leave`).

    Python runs a signal's handler in the main thread between two bytecodes. When a pod's or a terminal's whole
    process group is signalled, the local Ray's GCS dies with the driver's signal, and the main thread sits inside
    Ray's client: it retries the GCS for 60 s (``gcs_rpc_server_reconnect_timeout_s``), then Ray ends the process
    with exit 1, and the handler never runs. The interpreter also writes each signal's number to a wake-up pipe
    (``signal.set_wakeup_fd``) from its C-level handler; this thread reads it. Should the driver still be at work
    INTERRUPT_S later, it stops the Ray processes this driver started and leaves with the line a handled interrupt
    prints. What is stored is safe either way: every file is written whole (a temporary file, then a rename)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread (main() called from a thread): no watch
        os.close(read_fd)
        os.close(write_fd)
        return lambda: None
    armed = threading.Event()
    armed.set()

    def watch() -> None:
        try:
            while True:
                numbers = os.read(read_fd, 64)
                if not numbers:  # the end of the pipe: stood down
                    return
                if any(number in numbers for number in STOPPING):
                    break
        finally:
            os.close(read_fd)
        time.sleep(INTERRUPT_S)
        if not armed.is_set():
            return
        _say(f"error: the driver had not stopped {INTERRUPT_S:.0f} s after the interrupt (its Ray did not answer: "
             "stopped with it?); stopping the Ray processes it started")
        _stop_started_ray()
        _say(INTERRUPTED)
        os._exit(130)

    def stand_down() -> None:
        armed.clear()
        signal.set_wakeup_fd(previous)
        os.close(write_fd)  # the watch reads the end of the pipe and returns

    threading.Thread(target=watch, name="interrupt-watchdog", daemon=True).start()
    return stand_down


def _say(line: str) -> None:
    """A line on stderr, where there may be none left to write to (a terminal that hung up)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _stop_started_ray() -> None:
    """Kill the local Ray this driver started (none when it joined a cluster), as ``ray.shutdown`` would."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        if node is not None and node.is_head():
            node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
    except Exception:  # noqa: BLE001 - leaving is what matters now
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM anywhere is Ctrl-C: everything saved, Ray shut down, exit 130
    if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:  # a terminal that hung up (a dropped SSH session) too;
        signal.signal(signal.SIGHUP, _interrupt)          # under nohup it stays ignored
    stand_down = _watch_interrupts()
    try:
        return _search(args)
    finally:
        stand_down()


def _search(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables; --verbose brings them back
    from trainables.errors import InputError  # the base of every error a user can fix: study, study file, data, location

    options = SearchOptions(**vars(args))  # a strategy's options only when given (their default: SUPPRESS)
    try:
        checked = check(options)
        from search.runner.driver import run_study  # torch, Ray and Optuna come with it: the options passed

        summary = run_study(options, checked)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit) as err:
        # SystemExit(15): SIGTERM while ray.init ran, which answers it with sys.exit(signum) until it returns.
        if isinstance(err, SystemExit) and err.code != signal.SIGTERM:
            raise
        _say(INTERRUPTED)
        return 130
    except OSError as err:
        print(f"error: {err.filename or ''}: {err.strerror or err} (check the runs folder is writable and has free space)",
              file=sys.stderr)
        return 2
    from search.runner.console import cut, format_summary

    print(format_summary(summary))
    if summary.every_trial_errored:  # nothing was selected: not a search that succeeded (a script, a Ray job's status)
        print(f"error: every trial of study {summary.study} errored ({summary.trials} of {summary.trials}), so the search "
              f"selected nothing; the first one's error ends: {cut(summary.every_trial_errored)} (each trial's error "
              "text is in trials.parquet's error column, Ray's in the study's ray/ folder)", file=sys.stderr)
        return 1
    if summary.every_final_run_errored:  # the search selected, but the final stage measured nothing: nothing to publish
        runs = summary.final["runs"]
        split = "the test split" if summary.final.get("has_test") else "val (this study has no test split)"
        print(f"error: every final-stage run of study {summary.study} errored ({runs} of {runs}), so nothing was "
              f"measured on {split}; the first one's error ends: {cut(summary.every_final_run_errored)} (Ray's error "
              "files are in the study's ray/final-*/ folders). The search's trials are kept: once the cause is fixed, "
              "run the same command again to retry the final stage", file=sys.stderr)
        return 1
    return 0


TEARDOWN_S = 8.0  # the interpreter's teardown after the command has finished: far more than it takes


def _leave(code: int) -> None:
    """Exit with ``code`` through the interpreter's normal teardown (atexit hooks, threads), watched: should the
    teardown hold the process longer than TEARDOWN_S, every thread's stack is printed (what held it) and the process
    leaves with ``code`` anyway. (The hold once seen after a SIGTERM was inside ``main``: Ray's client retrying a GCS
    that the signal had stopped too, see :func:`_watch_interrupts`; this watch stays for whatever else may hold.)"""
    sys.stdout.flush()
    sys.stderr.flush()
    faulthandler.dump_traceback_later(TEARDOWN_S, exit=False)

    def give_up() -> None:
        time.sleep(TEARDOWN_S + 0.5)
        print(f"error: the interpreter's teardown held the driver for {TEARDOWN_S:.0f} s (stacks above); leaving",
              file=sys.stderr, flush=True)
        os._exit(code)

    threading.Thread(target=give_up, name="teardown-watchdog", daemon=True).start()
    sys.exit(code)


if __name__ == "__main__":
    _leave(main())
