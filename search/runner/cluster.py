"""Ray: connecting to a cluster (or starting a local one), what a trial asks of it, and GPU sharing.

``--gpus-per-trial auto`` measures one trial alone on a GPU first (:func:`pack`); the first
line's estimate measures an epoch where trials train (:func:`measure_epochs`). Both run as Ray
tasks with a trial's resources, so the driver itself never opens a CUDA context; on a Ray of one
node without GPUs, the driver's own, the estimate is measured in the driver (no worker to start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any, Iterator

from search.errors import StudyError
from search.runner.addresses import check_reachable, cluster_address
from search.runner.console import last_line
from search.runner.options import SearchOptions
from search.runner.plan import StudyPlan, TrialConfigs, trials_that_fit


def in_ray_job() -> bool:
    """Whether this driver is a Ray job's entrypoint (``ray job submit``, a RayJob): the job brings its runtime
    environment (its working directory, or an image with the project installed)."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    return RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ


def init_ray(options: SearchOptions) -> bool:
    """Connect to (or start) Ray; returns whether this call started or connected it (and so must shut it down).

    An existing cluster gets no resources (it has its own): Ray refuses ``num_cpus`` there."""
    import ray

    if ray.is_initialized():  # a notebook or a benchmark that set Ray up itself
        return False
    kwargs: dict[str, Any] = dict(log_to_driver=options.verbose, configure_logging=True,
                                  logging_level=logging.INFO if options.verbose else logging.ERROR)
    address, named_by = cluster_address(options)
    with _sigterm_held():
        _connect(address, named_by, kwargs)
    return True


@contextlib.contextmanager
def _sigterm_held() -> Iterator[None]:
    """A SIGTERM that comes while Ray starts is held until it has started, then raised as the caller's handler would
    (the command's: KeyboardInterrupt). Ray's own answer mid-start, sys.exit from the handler ray.init installs, left
    a half-started node whose agents outlived the driver; a started Ray is shut down whole."""
    import ray._private.utils as ray_utils

    caller = signal.getsignal(signal.SIGTERM)
    held: list[int] = []
    install = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda handler: None  # ray.init keeps the caller's handling of SIGTERM
    signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = install
        signal.signal(signal.SIGTERM, caller)
    if held and callable(caller):
        caller(held[0], None)
    elif held and caller == signal.SIG_DFL:
        signal.raise_signal(signal.SIGTERM)


def _connect(address: str | None, named_by: str, kwargs: dict[str, Any]) -> None:
    import ray

    if address is None:
        address, named_by = _started_here()
    elif address == "local":  # as Ray reads it: a Ray of the search's own, whatever `ray start` left running
        address = None
    if address is None:
        # No idle workers started ahead: trials' actors never take them (Ray Tune gives its actors their own runtime
        # environment), and each would import Ray for nothing. Read by the raylet as it starts; a user's setting stands.
        ours = "RAY_prestart_worker_first_driver" not in os.environ
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        try:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)
        finally:
            if ours:
                os.environ.pop("RAY_prestart_worker_first_driver", None)
        return
    check_reachable(address, named_by)
    if not in_ray_job():  # a job's workers run its own runtime environment; anything else gets the driver's code
        import models
        import search
        import trainables

        # Ship the project's code to the cluster's workers (their Python needs the dependencies).
        kwargs["runtime_env"] = {"py_modules": [models, search, trainables]}
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        if "Version mismatch" in str(err):  # Ray's message spans lines: the versions on each side are the point
            raise StudyError(f"the Ray cluster at {named_by} {address} runs other versions than this driver: "
                             f"{' '.join(str(err).split())}; install the cluster's Ray and Python here (or run the "
                             "search on a node of the cluster).") from None
        raise StudyError(f"cannot connect to the Ray cluster at {named_by} {address} ({_last_line(err)}); "
                         "check the address printed by `ray start --head` and that the cluster is up.") from None


def _started_here() -> tuple[str | None, str]:
    """The Ray that ``ray start`` left running on this machine, which ``ray.init()`` joins (and refuses resources
    for): its address and how the lines name it, or (None, "") to start a Ray of the search's own."""
    from ray._private.services import find_bootstrap_address

    address = find_bootstrap_address(None)  # written by `ray start` into Ray's temporary folder, removed by `ray stop`
    if not address:
        return None, ""
    print(f"ray: joining the Ray started on this machine at {address} (`ray start`); `ray stop` it, or pass "
          "--address local, for a Ray of the search's own", flush=True)
    return address, "the Ray started on this machine (`ray start`; if it is gone, `ray stop` clears its address)"


def resources(plan: StudyPlan) -> dict[str, float]:
    return {"cpu": plan.options.cpus_per_trial, "gpu": plan.gpus_per_trial}


def concurrency(plan: StudyPlan) -> int:
    """How many trials can run at once on the cluster's resources."""
    options = plan.options
    if plan.nodes:  # each trial on one node
        fits = trials_that_fit(plan.nodes, options.cpus_per_trial, plan.gpus_per_trial)
    else:
        fits = plan.cpus_available / options.cpus_per_trial
        if plan.gpus_per_trial:
            fits = min(fits, plan.gpus_available / plan.gpus_per_trial)
    return max(1, int(min(fits, options.max_concurrent or fits)))


def allow_pending_trials(plan: StudyPlan) -> None:
    """Ray Tune keeps one trial pending at a time with a searcher, so short trials never overlap
    (each waits for the previous one's worker to start). Allow as many pending trials as can run at once."""
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(concurrency(plan))


def gpu_callbacks(plan: StudyPlan) -> list[Any]:
    """Trials sharing a GPU: one that runs out of its memory is retried with a larger share (search.runner.packing)."""
    from search.runner.packing import out_of_memory_retry

    return [out_of_memory_retry()] if 0 < plan.gpus_per_trial < 1 else []


def _cancel(running: Any) -> None:
    """Stop a measuring task that failed or ran past its time (None: none was started), so it frees what it holds."""
    import ray

    if running is not None:
        with contextlib.suppress(Exception):  # already ended, or Ray is going away: nothing to free
            ray.cancel(running, force=True)


def _last_line(err: Exception) -> str:
    return last_line(str(err))[:160]


def pack(plan: StudyPlan, configs: TrialConfigs) -> None:
    """--gpus-per-trial auto: one trial alone on a GPU, measured; then the share per trial (search.runner.packing)."""
    import ray

    from search.runner.packing import choose_share
    from trainables.measure import GpuProbe, probe_gpu

    probe = ray.remote(num_cpus=plan.options.cpus_per_trial, num_gpus=1)(probe_gpu)
    running = probe.remote(plan.family, configs.widest(), plan.data)
    try:
        measured = ray.get(running, timeout=600)
    except Exception as err:  # noqa: BLE001 - fall back to a whole GPU per trial, and say why
        _cancel(running)  # a probe past its time holds its GPU: the first trial would wait behind it
        print(f"--gpus-per-trial auto: the measurement failed ({_last_line(err)}); one trial per GPU", flush=True)
        return
    if measured is None:
        print("--gpus-per-trial auto: the GPU worker found no CUDA device; one trial per GPU", flush=True)
        return
    plan.probe = GpuProbe(**measured)
    share = choose_share(plan.probe)
    plan.gpus_per_trial = share.fraction
    print(f"--gpus-per-trial auto: {share.fraction:g} ({share.why})", flush=True)


def _trials_train_beside_the_driver(plan: StudyPlan) -> bool:
    """Whether trials train on this driver's CPUs: Ray is one node, the driver's, with no GPU (a local Ray; never
    through Ray Client, whose driver is elsewhere)."""
    import ray

    if plan.gpus_available or plan.gpus_per_trial or ray.util.client.ray.is_connected():
        return False
    try:
        alive = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
        return alive == [ray.get_runtime_context().get_node_id()]
    except Exception:  # noqa: BLE001 - when in doubt, measure as a task where trials train
        return False


def measure_epochs(plan: StudyPlan, configs: TrialConfigs) -> tuple[float | None, float | None, str] | None:
    """Seconds per epoch of the study default and of its widest models, measured where trials train, and where that
    was, in words for the estimate's line (None, with a line saying why, when it cannot be measured)."""
    import ray

    from models.registry import registrations
    from trainables.measure import measure_epoch_seconds, measure_on_worker

    if plan.probe is not None and plan.probe.epoch_s:  # auto packing measured them alone on a GPU
        epoch_s, widest_s = (list(plan.probe.epoch_s) + [None, None])[:2]
        return epoch_s, widest_s, "alone on a GPU"
    running = None
    try:
        # Here: no worker process to start (and to import torch) for it. A few steps of CPU-sized models, so the
        # task's timeout and process isolation are given up; a GPU or a cluster keeps them.
        if _trials_train_beside_the_driver(plan):
            epoch_s, widest_s = (measure_epoch_seconds(plan.family, config, plan.data) if config is not None else None
                                 for config in configs.widest())
            where = "here"
        else:  # a task with a trial's resources: measured where trials train, no CUDA context in the driver
            measure = ray.remote(num_cpus=plan.options.cpus_per_trial, num_gpus=plan.gpus_per_trial)(measure_on_worker)
            running = measure.remote(plan.family, configs.widest(), plan.data, registrations())
            epoch_s, widest_s = ray.get(running, timeout=300)
            where = "on a Ray worker"
    except Exception as err:  # noqa: BLE001 - a measurement is a nicety: never a reason not to search
        _cancel(running)  # past its time it would hold a trial's resources
        print(f"estimate: not available ({_last_line(err)})", flush=True)
        return None
    return epoch_s, widest_s, where
