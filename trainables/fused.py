"""Fused trials: configurations of one family that share their network's shape train in one process as one
batched network, each with its own optimizer, seed, batch order, augmentation, checkpoints and reports.

At the widths a search tries, one small model leaves a GPU mostly idle (benchmarks/README.md, section 10);
HFTA (MLSys'21) fuses many small models' kernels into one. Here a group's forward and backward are one call
of the network under ``torch.func.vmap`` (``functional_call`` on the members' parameters stacked along a new
first dimension, as ``torch.func.stack_module_state`` lays them out); everything that differs between the
members stays each member's own, taken from the lone trial's own code (:mod:`trainables.loop`):

- its initial weights: each member is set up as a lone trial is (:func:`trainables.loop.set_up_trial`, seeded
  from its key and seed);
- its optimizer: the lone trial's own object (Adam, SGD or Adadelta, with its learning rate, betas, weight
  decay and moments; its loss scaler on fp16), stepped on its own parameters, which the batched call stacks
  at every step (so the gradient each receives is its own loss's);
- its batch order (its own generator) and augmentation (drawn from its own global random stream, swapped in
  around its draws);
- its epochs' measurement, best model, checkpoints (resumable as a lone trial's) and reports, one per member.

So a member's per-epoch val L1 equals its lone run's to float tolerance (tests/test_fused.py; batched kernels
add in another order). Dropout's draws inside the batched call are not a lone run's (vmap's ``different``
randomness), so with dropout > 0 a member trains as well but not identically. A member that diverges, ends or
is told to stop by its report function (returning True: an early-stopping decision) leaves the group; the
others go on.

What a family needs to be fused: one network (``OneNetworkFamily``) with a ``logits`` method, a
``member_loss(logits, maps, valid)`` that its own ``train_step`` also uses, and ``fusion_fields``: the
hyperparameters members must share (the network's shape, the loss, the batch size). The autoencoder has them.
Not yet wired into the search's Ray trials: :func:`run_fused` is the trainable-level piece, measured by
``benchmarks/levers.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from trainables.checkpoints import TrialStore
from trainables.config import parse_config
from trainables.data import VMSDataset
from trainables.family import Family
from trainables.loop import Progress, Trial, close_epoch, default_report, resume, run_trial, set_up_trial
from trainables.steps import augmented_batch

Report = Callable[[dict[str, Any]], Any]  # a member's report; returning True stops that member


class _Logits(nn.Module):
    """The network's pre-activation as its forward, for ``functional_call`` (parameter names gain ``net.``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logits(x)


def fusion_key(family_cls: type[Family], config: dict[str, Any]) -> str | None:
    """What configurations must share to train fused: the family's ``fusion_fields`` and every run setting but the
    seed and the checkpoint folder. None: the family cannot be fused."""
    fields = getattr(family_cls, "fusion_fields", None)
    if fields is None:
        return None
    settings, hp = parse_config(config, family_cls.config_cls)
    shared = dataclasses.replace(settings, seed=0, checkpoint_root="")
    return repr((family_cls.name, tuple(getattr(hp, f) for f in fields), shared))


def fusion_groups(family_cls: type[Family], configs: list[dict[str, Any]]) -> list[list[int]]:
    """The configurations' indices in groups that can train fused (in first-seen order; a lone index where the
    family cannot be fused)."""
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        key = fusion_key(family_cls, config)
        groups.setdefault(key if key is not None else f"alone-{index}", []).append(index)
    return list(groups.values())


@dataclass
class _Member:
    index: int
    trial: Trial
    progress: Progress
    report: Report
    rng: torch.Tensor  # its global random stream (augmentation), swapped in around its draws
    last: dict[str, Any] | None = None
    done: bool = False


def run_fused(configs: list[dict[str, Any]], data: VMSDataset, family_cls: type[Family], *,
              reports: list[Report] | None = None, storages: list[TrialStore | None] | None = None) -> list[dict[str, Any]]:
    """Train ``configs`` (one fusion group: :func:`fusion_groups`) together; returns each one's last reported row.

    ``reports[i]`` gets member ``i``'s rows as :func:`trainables.loop.run_trial` would report them (replayed rows
    first, after a resume); ``storages[i]`` is its checkpoint folder as a search gives it. Members resumed at
    different epochs (or a family that cannot be fused) train one after another, each alone.
    """
    reports = reports or [default_report] * len(configs)
    storages = storages or [None] * len(configs)
    keys = {fusion_key(family_cls, c) for c in configs}
    if None in keys or len(keys) > 1:
        raise ValueError("these configurations cannot train fused: they differ in "
                         f"{', '.join(getattr(family_cls, 'fusion_fields', ('the family',)))} or in their run settings; "
                         "group them with trainables.fused.fusion_groups")
    if any(parse_config(c, family_cls.config_cls)[0].replay for c in configs):
        raise ValueError("a replayed population member's schedule cannot train fused; run it alone")
    if len(configs) == 1:
        return [run_trial(configs[0], data, family_cls, storage=storages[0], report=reports[0])]
    with contextlib.ExitStack() as locks:
        members = []
        for index, config in enumerate(configs):
            trial = set_up_trial(config, data, family_cls, storages[index])
            if trial.store:
                locks.enter_context(trial.store.locked())
            progress, report = resume(trial, reports[index])
            members.append(_Member(index, trial, progress, report, torch.get_rng_state(),
                                   progress.history[-1] if progress.history else None))
        epochs = {m.progress.epoch for m in members}
        if len(epochs) == 1:
            return _train(members, epochs.pop())
    # Resumed at different epochs: each alone (its checkpoint, read again, resumes it the same way).
    return [run_trial(c, data, family_cls, storage=s, report=r) for c, s, r in zip(configs, storages, reports)]


def _train(members: list[_Member], done_epochs: int) -> list[dict[str, Any]]:
    settings = members[0].trial.settings
    for m in members:
        m.done = m.progress.ended or done_epochs >= settings.epochs
        m.progress.wall_start = time.perf_counter() - (m.progress.history[-1]["wall_seconds"] if m.progress.history else 0.0)
    for epoch in range(done_epochs + 1, settings.epochs + 1):
        active = [m for m in members if not m.done]
        if not active:
            break
        started = time.perf_counter()
        losses = train_epoch_fused(active)
        share = (time.perf_counter() - started) / len(active)  # each member's share of the group's steps
        for m, loss in zip(active, losses):
            torch.set_rng_state(m.rng)
            row = close_epoch(m.trial, m.progress, epoch, loss, share)  # as a lone trial's epoch ends
            stop = m.report(dict(row))
            m.rng, m.last = torch.get_rng_state(), row
            m.done = row["status"] != "running" or stop is True
    return [m.last or {} for m in members]


def train_epoch_fused(members: list[_Member]) -> list[dict[str, float]]:
    """One pass over the training pairs for every member at once, each in its own batch order; each one's mean loss.

    As :func:`trainables.loop.train_epoch` for each member, with the forward and backward of all members in one
    batched call."""
    first = members[0].trial
    tensors, device = first.tensors, first.device
    n_train = len(tensors.train_images)
    batch_size = max(1, min(getattr(first.hp, "batch_size", 16), n_train))
    orders = []
    for m in members:
        m.trial.family.train(True)
        orders.append(torch.randperm(n_train, generator=m.trial.batch_gen).to(device))
    nets = [m.trial.family.net for m in members]
    template = _Logits(nets[0])
    params = [dict(_Logits(net).named_parameters()) for net in nets]
    buffers = [dict(_Logits(net).named_buffers()) for net in nets]
    family = first.family

    def member_loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], image: torch.Tensor,
                    vms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return family.member_loss(functional_call(template, (p, b), (image,)), vms, valid)

    batched = vmap(member_loss, randomness="different")
    sums = torch.zeros(len(members), device=device)
    batches = 0
    for start in range(0, n_train, batch_size):
        if min(batch_size, n_train - start) < 2 and n_train >= 2:
            continue  # a lone sample breaks BatchNorm statistics
        images, maps, valids = [], [], []
        for m, order in zip(members, orders):
            index = order[start : start + batch_size]
            torch.set_rng_state(m.rng)
            image, vms, valid = augmented_batch(family, tensors.train_images, tensors.train_maps, index, m.trial.augment)
            m.rng = torch.get_rng_state()
            images.append(image)
            maps.append(vms)
            valids.append(valid)
        stacked_p = {k: torch.stack([p[k] for p in params]) for k in params[0]}
        stacked_b = {k: torch.stack([b[k] for b in buffers]) for k in buffers[0]}
        with family.precision.autocast():
            loss = batched(stacked_p, stacked_b, torch.stack(images), torch.stack(maps), torch.stack(valids))
        with torch.no_grad():  # BatchNorm's running statistics, updated in the stacked copies, back to each member
            for k in buffers[0]:
                for i, b in enumerate(buffers):
                    b[k].copy_(stacked_b[k][i])
        for m in members:
            m.trial.family.opt.zero_grad(set_to_none=True)
        # Each member's loss scaled by its own scaler (on fp16); their sum's gradient is each one's own.
        sum(m.trial.family.scaler.scale(loss[i]) for i, m in enumerate(members)).backward()
        for m in members:
            m.trial.family.scaler.step(m.trial.family.opt)
            m.trial.family.scaler.update()
        sums += loss.detach().float()
        batches += 1
    means = (sums / max(batches, 1)).tolist()
    return [{"train_loss": mean} for mean in means]
