"""A member of population-based training: one model whose hyperparameters change while it trains.

Ray Tune's ``PopulationBasedTraining`` (or ``PB2``) scheduler, every perturbation interval, sends
each member of the bottom quantile back to work from a top member's weights (exploit) with
perturbed hyperparameters (explore): Ray restarts the member's trial with the new config and the
donor's checkpoint (``tune.get_checkpoint()``). The strategy is search/strategies/population.py.

Where the weights live: the study store's checkpoints, not Ray's. Each member has a folder,
``<checkpoint_root>/member-<i>/``, with ``epoch-<e>.pt`` after every epoch (everything needed to
continue exactly, as a trial's latest.pt; the newest ``snapshots`` kept, since a donor keeps
training while the members that copy it restart), ``best.pt`` and ``predictions.npz``. The checkpoint
a member reports to Ray with every epoch is only a pointer, ``member.json``:
``{"member": i, "epoch": e}``. So a member starts from:

- a pointer to another member: that donor's ``epoch-<e>.pt`` (an exploit), with the config's
  hyperparameters (the explored ones); its first new epoch's row names the donor;
- its own pointer: its own newest snapshot (a member Ray paused at a decision, or restarted after a
  lost worker), so no member restarts from epoch 0;
- none, in a new driver after a kill, whose searcher hands each member the hyperparameters it last
  had: the donor's snapshot when the killed driver's last decision for this member, in
  ``decisions.json``, was an exploit the member had not yet trained from; else its own newest
  snapshot, whose last row it reports again (marked replayed) so that a decision the kill
  interrupted is made at the epoch it was due, on that epoch's val L1, as in a run never killed;
- nothing: epoch 0.

``decisions.json`` (beside the member folders) is written by the driver at each decision, before
the members go on: per decision epoch, each exploiting member's donor (member, epoch) and new
hyperparameters (:func:`record_decision`).

Every reported row carries ``member``, ``member_hp`` (the hyperparameters it trained with) and, on the
first epoch after an exploit, ``donor_member`` and ``donor_epoch``; the search's schedule callback writes them, with the hyperparameters in
effect, to ``schedules.parquet``. The snapshot's history keeps the same rows, so a row whose report a killed
driver never received is recovered when the population resumes.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from trainables.storage import Location, location_of
from trainables.checkpoints import CHECKPOINT_FORMAT, TrialStore, checkpoint_state
from trainables.config import member_folder, parse_config
from trainables.data import VMSDataset
from trainables.family import Family
from trainables.loop import Progress, Trial, measure_epoch, restore, retune, set_up_trial, train_epoch

POINTER = "member.json"
DECISIONS = "decisions.json"


def read_decisions(root: Location) -> dict[int, dict[int, dict[str, Any]]]:
    """The population's decisions so far: decision epoch -> exploiting member -> {"donor": [member, epoch],
    "config": {hyperparameter: value}} ({} for a decision in which no member exploited); {} when none was made."""
    where = root / DECISIONS
    if not where.is_file():
        return {}
    return {int(epoch): {int(m): outcome for m, outcome in made.items()}
            for epoch, made in json.loads(where.read_text()).items()}


def record_decision(root: Location, epoch: int, exploits: dict[int, dict[str, Any]]) -> None:
    """Add the decision made at ``epoch`` (see :func:`read_decisions`), written whole and atomically."""
    decisions = read_decisions(root)
    decisions[int(epoch)] = exploits
    payload = {str(e): {str(m): o for m, o in sorted(made.items())} for e, made in sorted(decisions.items())}
    (root / DECISIONS).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", fsync=True)


def pending_exploit(root: Location, member: int, newest: int) -> dict[str, int] | None:
    """The donor pointer of the last decision's exploit of ``member`` when the member has not trained past it
    (its newest snapshot is at ``newest``): a driver killed after deciding and before the member's first epoch
    from the donor. None otherwise."""
    decisions = read_decisions(root)
    if not decisions:
        return None
    last = max(decisions)
    outcome = decisions[last].get(member)
    if outcome is None or newest > last:
        return None
    donor_member, donor_epoch = outcome["donor"]
    return {"member": int(donor_member), "epoch": int(donor_epoch)}


class MemberStore(TrialStore):
    """A member's folder: ``epoch-<e>.pt`` per epoch (its newest ``keep``), best.pt and predictions.npz."""

    def __init__(self, root: Location, member: int, keep: int) -> None:
        super().__init__(root / member_folder(member))
        self.member, self.keep = member, max(2, keep)

    def epochs(self) -> list[int]:
        found = [re.fullmatch(r"epoch-(\d+)\.pt", f.name) for f in self.folder.files()]
        return sorted(int(m.group(1)) for m in found if m)

    def save_epoch(self, state: dict[str, Any]) -> None:
        """Write this epoch's snapshot, then drop those older than the newest ``keep``."""
        (self.folder / f"epoch-{state['epoch']:04d}.pt").write(lambda handle: torch.save(state, handle))
        for epoch in self.epochs()[:-self.keep]:
            (self.folder / f"epoch-{epoch:04d}.pt").delete()

    def load_epoch(self, epoch: int | None = None) -> dict[str, Any] | None:
        """Snapshot ``epoch`` (None: the newest readable one); None when there is none."""
        candidates = [epoch] if epoch is not None else list(reversed(self.epochs()))
        for candidate in candidates:
            path = self.folder / f"epoch-{candidate:04d}.pt"
            try:
                with path.reader() as handle:
                    state = torch.load(handle, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - unreadable or gone: an older one, or a clear error
                if epoch is not None:
                    raise RuntimeError(f"member {self.member}'s snapshot of epoch {epoch} ({path}) cannot be read: "
                                       f"{str(err).splitlines()[0][:160]}; it is kept for {self.keep} epochs") from None
                self.notice = f"{path.name} is unreadable; resumed from an older snapshot"
                continue
            if state.get("format") == CHECKPOINT_FORMAT:
                return state
        return None


def read_pointer(checkpoint: Any) -> dict[str, int] | None:
    """The member and epoch a Ray checkpoint of a member points to (None: no checkpoint)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / POINTER).read_text())


def report_with_pointer(row: dict[str, Any], member: int) -> None:
    """Report an epoch to Ray Tune with a checkpoint that points at this member's snapshot of it."""
    from ray import tune

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / POINTER).write_text(json.dumps({"member": member, "epoch": int(row["epoch"])}))
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))


def run_member(config: dict[str, Any], data: VMSDataset, family_cls: type[Family], *,
               storage: TrialStore | None = None, pointer: dict[str, int] | None = None,
               report: Callable[[dict[str, Any], int], None] = report_with_pointer) -> dict[str, Any]:
    """Train one member from where it stands to its last epoch; returns the last row.

    ``pointer``: where to start (see the module's docstring); None inside Ray reads ``tune.get_checkpoint()``.
    """
    settings, _ = parse_config(config, family_cls.config_cls)
    if settings.member < 0 or not (storage or settings.checkpoint_root):
        raise ValueError("a population member needs its index (member >= 0) and its storage (or a checkpoint_root)")
    fresh = pointer is None  # in Ray: the first start of this member under this driver
    if fresh:
        from ray import tune

        pointer = read_pointer(tune.get_checkpoint())
        fresh = pointer is None
    trial = set_up_trial(config, data, family_cls, storage)
    root = storage.folder.parent if storage is not None else location_of(settings.checkpoint_root)
    store = MemberStore(root, settings.member, settings.snapshots)
    trial.store = store
    wanted = {name: getattr(trial.hp, name) for name in family_cls.retunable_names() if hasattr(trial.hp, name)}
    with store.locked():
        if fresh:
            pointer = pending_exploit(root, settings.member, max(store.epochs(), default=0))
        progress, donor = _start(trial, store, root, pointer)
        retune(trial, wanted)  # the config's hyperparameters, over what the snapshot's optimizers held
        row: dict[str, Any] = progress.history[-1] if progress.history else {}
        if progress.ended or progress.epoch >= settings.epochs:  # finished, and the search has recorded it
            return row
        if fresh and donor is None and row:  # a decision due at this epoch is made on it, as if never killed
            report(dict(row, replayed=True), settings.member)
        for epoch in range(progress.epoch + 1, settings.epochs + 1):
            started = time.perf_counter()
            trial.utilisation.start()
            row = measure_epoch(trial, progress, epoch, train_epoch(trial), started)
            row.update(member=settings.member, member_hp=dict(wanted))
            if donor is not None:
                row.update(donor_member=donor[0], donor_epoch=donor[1])
                donor = None
            progress.history.append(row)  # in the snapshot too: a kill before the report reaches the driver
            best, trial.pending_best = trial.pending_best, None  # loses no row of the schedule
            if best is not None:
                store.save_best(*best)
            store.save_epoch(checkpoint_state(trial, progress))
            report(row, settings.member)
            if row["status"] == "diverged":
                break
        return row


def _start(trial: Trial, store: MemberStore, root: Location,
           pointer: dict[str, int] | None) -> tuple[Progress, tuple[int, int] | None]:
    """Load where the member starts: a donor's snapshot, its own newest, or nothing (epoch 0).
    Returns its progress and the donor (member, epoch) when it took another member's weights."""
    donor = None
    if pointer is not None and pointer["member"] != store.member:
        state = MemberStore(root, pointer["member"], store.keep).load_epoch(pointer["epoch"])
        donor = (pointer["member"], pointer["epoch"])
    else:
        state = store.load_epoch()
    if state is None:
        return Progress([]), None
    progress = restore(trial, state)
    progress.wall_start = time.perf_counter() - (progress.history[-1]["wall_seconds"] if progress.history else 0.0)
    return progress, donor
