"""The greedy searcher itself (a Ray Tune ``Searcher``; its strategy object is in ``greedy.py``).

What it does and why: the docstring of ``search/strategies/greedy.py``.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ray.tune.search import Searcher

from trainables.faults import crash_point
from search.space import Space
from trainables.storage import write_json_atomic
from search.store.study import JsonFile
from search.strategies.base import OpenSearch, SearcherRecord
from trainables.config import DIVERGED_L1

if TYPE_CHECKING:
    pass

STATE_VERSION = 1


def config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


@dataclass
class Block:
    """One coordinate: the parameter varied, the configs tried, and what was adopted."""

    sweep: int
    index: int
    param: str
    keys: list[str]
    adopted: Any = None
    values: dict[str, float] = field(default_factory=dict)  # str(value) -> objective
    held: Any = None  # the value held when the block opened
    advantage: float | None = None  # best challenger's relative gain over the held value (0.05: 5% lower L1)
    decision: str = ""  # "adopted", "kept: within the noise margin", "held was best"


@dataclass
class GreedyState:
    version: int
    current: dict[str, Any]  # the adopted defaults so far
    sweep: int = 0
    position: int = 0  # index into the space's order within the sweep
    changed_in_sweep: bool = False
    finished: bool = False
    evaluated: dict[str, float] = field(default_factory=dict)  # config key -> objective
    blocks: list[Block] = field(default_factory=list)  # resolved blocks, then the open one last
    open_block: bool = False
    margin: float = 0.0  # a challenger must lower the held value's L1 by more than this fraction to be adopted


class GreedySearcher(Searcher):
    def __init__(
        self,
        space: Space,
        *,
        metric: str = "best_val_l1",
        mode: str = "min",
        max_sweeps: int = 1,
        max_blocks: int | None = None,
        state_file: JsonFile | None = None,
        margin: float = 0.0,
        on_block: Callable[[Block], None] | None = None,
    ) -> None:
        if mode != "min":
            raise ValueError("the greedy searcher minimises (val L1); mode must be 'min'")
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.max_sweeps = max_sweeps
        self.max_blocks = max_blocks if max_blocks is not None else len(space.params)
        self.state_file = state_file
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"the greedy margin is a fraction of the held value's L1 in [0, 1), got {margin}")
        self.state = GreedyState(version=STATE_VERSION, current=space.defaults(), margin=margin)
        self.on_block = on_block
        self._queue: list[str] = []  # keys of the open block not yet proposed
        self._configs: dict[str, dict[str, Any]] = {}
        self._running: dict[str, str] = {}  # trial id -> key
        self.trial_blocks: dict[str, Block] = {}  # trial id -> the block that proposed it

    # -- the Searcher interface -------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        # Metric and mode are fixed at construction; accept Tune's call without changes.
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None | str:
        while True:
            if self.state.finished:
                return Searcher.FINISHED
            if not self.state.open_block:
                self._open_next_block()
                continue
            if self._queue:
                key = self._queue.pop(0)
                self._running[trial_id] = key
                self.trial_blocks[trial_id] = self.state.blocks[-1]
                return dict(self._configs[key])
            if self._running:
                return None  # wait for the block's trials to finish
            self._resolve_block()

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        key = self._running.pop(trial_id, None)
        if key is None:
            return
        value = result.get(self.metric) if result else None
        if value is None or not math.isfinite(value):
            value = DIVERGED_L1  # an errored or diverged trial is a bad result, not a missing one
        self.state.evaluated[key] = min(value, self.state.evaluated.get(key, math.inf))
        self._persist()
        crash_point("searcher-complete")

    def save(self, checkpoint_path: str) -> None:  # Ray Tune's own copy, in its experiment folder
        write_json_atomic(checkpoint_path, asdict(self.state), crash="greedy-state-tmp", fsync=True, sort_keys=False)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as handle:
            self.set_state(json.load(handle), checkpoint_path)

    def set_state(self, payload: dict[str, Any], source: Any = "greedy state") -> None:
        """Continue from a saved state (``greedy_state.json``): re-propose what the open block had not finished."""
        if payload.get("version") != STATE_VERSION:
            raise ValueError(f"{source}: greedy state version {payload.get('version')} is not {STATE_VERSION}")
        payload["blocks"] = [Block(**b) for b in payload["blocks"]]
        self.state = GreedyState(**payload)
        self._running.clear()
        self._queue, self._configs = [], {}
        if self.state.open_block:  # re-propose what the block had not finished
            block = self.state.blocks[-1]
            for key in block.keys:
                self._configs[key] = json.loads(key)
                if key not in self.state.evaluated:
                    self._queue.append(key)

    # -- helpers ----------------------------------------------------------------------

    def _persist(self) -> None:
        if self.state_file is not None:
            self.state_file.write(asdict(self.state))

    def _open_next_block(self) -> None:
        order = self.space.params[: self.max_blocks]
        while self.state.position < len(order):
            param = order[self.state.position]
            if not self.space.active(param.name, self.state.current):
                self.state.position += 1
                continue
            candidates = self.space.choice(param.name, self.state.current).values
            configs = [self.space.with_value(self.state.current, param.name, v) for v in candidates]
            keys = [config_key(c) for c in configs]
            self.state.blocks.append(Block(self.state.sweep, len(self.state.blocks), param.name, keys))
            self.state.open_block = True
            self._configs = dict(zip(keys, configs))
            # The held default (and anything else seen before) is not run again.
            self._queue = [k for k in dict.fromkeys(keys) if k not in self.state.evaluated]
            self._persist()
            return
        # End of a sweep.
        self.state.sweep += 1
        self.state.position = 0
        if self.state.sweep >= self.max_sweeps or not self.state.changed_in_sweep:
            self.state.finished = True
        self.state.changed_in_sweep = False
        self._persist()

    def _resolve_block(self) -> None:
        block = self.state.blocks[-1]
        held = config_key(self.state.current)
        # Ties keep the held default (no change without evidence), then the first value.
        scored = [(self.state.evaluated.get(k, DIVERGED_L1), k != held, i, k) for i, k in enumerate(block.keys)]
        best_value, _, _, best_key = min(scored)
        for value, _, _, key in scored:
            block.values[str(self._configs[key][block.param])] = value
        block.held = self.state.current.get(block.param)
        held_value = self.state.evaluated.get(held) if held in block.keys else None
        if best_key == held:
            block.decision = "held was best"
        elif held_value is not None and 0 < held_value < DIVERGED_L1:
            block.advantage = (held_value - best_value) / held_value
            if block.advantage <= self.state.margin:
                # One run each is no evidence for a difference smaller than the seed-to-seed noise.
                best_key = held
                block.decision = f"kept: within the noise margin ({self.state.margin:.1%})"
            else:
                block.decision = "adopted"
        else:
            block.decision = "adopted"
        block.adopted = self._configs[best_key][block.param]
        if self._configs[best_key] != self.state.current:
            self.state.changed_in_sweep = True
        self.state.current = dict(self._configs[best_key])
        self.state.open_block = False
        self.state.position += 1
        self._persist()
        if self.on_block:
            self.on_block(block)

    def planned_blocks(self) -> list[int]:
        """Trials still to train, block by block: the open block's unfinished ones, then the new values
        of each block still to come if the held values stay (first sweep)."""
        if self.state.finished:
            return []
        blocks = [len(self._running) + len(self._queue)] if self.state.open_block else []
        first = not self.state.open_block and config_key(self.state.current) not in self.state.evaluated
        start = self.state.position + (1 if self.state.open_block else 0)
        for param in self.space.params[: self.max_blocks][start:]:
            if self.space.active(param.name, self.state.current):
                # The first block also trains the held configuration itself.
                blocks.append(len(self.space.choice(param.name, self.state.current).values) - 1 + first)
                first = False
        return blocks

    def planned_total(self) -> int:
        """Configurations the search will have trained in all: those evaluated, plus :meth:`planned_blocks`."""
        return len(self.state.evaluated) + sum(self.planned_blocks())

    @property
    def best(self) -> tuple[dict[str, Any], float] | None:
        """The best configuration evaluated so far and its objective."""
        if not self.state.evaluated:
            return None
        key = min(self.state.evaluated, key=self.state.evaluated.get)
        return json.loads(key), self.state.evaluated[key]


class GreedySearch(OpenSearch):
    """The greedy searcher of one driver run, restored from ``greedy_state.json`` when the study has one."""

    def __init__(self, searcher: GreedySearcher, key_of: Callable[[dict[str, Any]], str]) -> None:
        self.searcher = searcher
        self.block_of = searcher.trial_blocks.get
        self.columns_of = functools.partial(block_columns, searcher.trial_blocks)
        self.group_column = "greedy_block"
        self.to_run = 0 if searcher.state.finished else None
        first_block: dict[str, Block] = {}
        for block in searcher.state.blocks:
            for key in block.keys:
                first_block.setdefault(key, block)
        self.done = {key_of(json.loads(key)): SearcherRecord(json.loads(key), errored=value >= DIVERGED_L1,
                                                             columns=_columns(first_block.get(key)))
                     for key, value in searcher.state.evaluated.items()}

    def planned_total(self) -> Callable[[], int]:
        return self.searcher.planned_total

    def planned_blocks(self) -> list[int]:
        return self.searcher.planned_blocks()

    def reached_end(self) -> bool:
        return self.searcher.state.finished


def block_columns(trial_blocks: dict[str, Block], ray_trial_id: str) -> dict[str, Any]:
    """Greedy's columns of trials.parquet for a trial: its sweep, block and the parameter the block varied."""
    return _columns(trial_blocks.get(ray_trial_id))


def _columns(block: Block | None) -> dict[str, Any]:
    return {} if block is None else {"greedy_sweep": block.sweep, "greedy_block": block.index,
                                     "greedy_param": block.param}


def block_line(block: Block) -> str:
    """One line when a greedy block resolves: what it adopted and by how much."""
    gain = ""
    if block.advantage is not None and block.decision == "adopted":
        gain = f", {block.advantage:+.1%} lower L1 than the held {block.held}"
    elif block.advantage is not None:  # kept: name the challenger the margin turned down
        challenger = min((value, name) for name, value in block.values.items() if name != str(block.held))[1]
        gain = f"; the best challenger, {challenger}, had {block.advantage:.1%} lower L1"
    return f"block {block.index} ({block.param}): {block.decision}, now {block.param}={block.adopted}{gain}"
