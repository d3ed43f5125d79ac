"""Declarative search spaces: the study files in ``studies/`` (TOML).

A study file names its model ``family``, the greedy ``order`` of its parameters, each
parameter's candidate ``values`` (what greedy tries), its ``default`` (where greedy
starts) and, where it makes sense, a continuous ``range`` (what TPE and random sample
from; ``log = true`` for log scale). Conditional parameters are expressed, not faked:

* ``when = { optimizer = ["adam", "adamw"] }``: the parameter exists only then;
* ``depends_on = "optimizer"`` with one ``[params.NAME.cases.VALUE]`` table per value of
  the parent: values, default and range differ per case (the report's learning rates
  differ per optimizer).

``[fixed]`` holds family settings that are not searched. See ``studies/gan.toml`` for a
complete example; a user adds a study by writing a new file, not code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.errors import InputError

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
HISTORY_DIR = STUDIES_DIR / "history"  # earlier versions of the study files: <family>-<fingerprint>.toml
CORE_KEYS = ("family", "description", "order", "params", "fixed")  # every study file's; a strategy may add its own


class StudyFileError(InputError):
    """A malformed or inconsistent study file; the message names the file and the fix."""


@dataclass(frozen=True)
class Choice:
    """The candidates of one parameter (in one case of its parent)."""

    values: tuple[Any, ...]
    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def has_range(self) -> bool:
        return self.low is not None


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # int, float, str, bool: the family config's type for this name
    choices: dict[Any, Choice]  # parent value -> Choice; key None when unconditional
    depends_on: str | None = None
    when: dict[str, tuple[Any, ...]] | None = None


class Space:
    """A family's search space, with the operations every strategy needs."""

    def __init__(self, family: str, order: list[Param], fixed: dict[str, Any], source: str, raw: dict[str, Any]) -> None:
        self.family, self.params, self.fixed, self.source = family, order, fixed, source
        self.by_name = {p.name: p for p in order}
        self._raw = raw
        self.text: str | None = None  # the study file's text, when it was read from one
        # A strategy's own sections of the study file (population-based training's [pbt]), as written: the strategy
        # reads and checks its own (Strategy.study_sections).
        self.sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in raw.items() if k not in CORE_KEYS}

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def record(self) -> dict[str, Any]:
        """What study.json keeps of the space, so a study resumes with it whatever becomes of the file:
        the study file's text (its order intact), else its parsed content."""
        return {"space_toml": self.text} if self.text is not None else {"space": self._raw}

    @property
    def fingerprint(self) -> str:
        """A hash of the space's content: a study refuses to continue on another space."""
        return hashlib.sha1(json.dumps(self._raw, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def active(self, name: str, config: dict[str, Any]) -> bool:
        param = self.by_name[name]
        if param.when:
            for parent, allowed in param.when.items():
                if parent not in config or config[parent] not in allowed:
                    return False
        if param.depends_on and param.depends_on not in config:
            return False
        return True

    def choice(self, name: str, config: dict[str, Any]) -> Choice:
        param = self.by_name[name]
        return param.choices[config[param.depends_on]] if param.depends_on else param.choices[None]

    def resolve(self, partial: dict[str, Any]) -> dict[str, Any]:
        """Fill in defaults and drop inactive parameters, in order (parents come first)."""
        config: dict[str, Any] = {}
        for param in self.params:
            if not self.active(param.name, config):
                continue
            choice = self.choice(param.name, config)
            value = partial.get(param.name, choice.default)
            config[param.name] = value
        return config

    def defaults(self) -> dict[str, Any]:
        return self.resolve({})

    def default_config(self) -> dict[str, Any]:
        """The study default as a model's whole config: the fixed values and each parameter's default."""
        return {**self.fixed, **self.defaults()}

    def dependents(self, name: str) -> set[str]:
        """Parameters whose existence or candidates follow (transitively) from ``name``."""
        found: set[str] = set()
        frontier = {name}
        while frontier:
            parent = frontier.pop()
            for param in self.params:
                parents = {param.depends_on} | set(param.when or {})
                if parent in parents and param.name not in found:
                    found.add(param.name)
                    frontier.add(param.name)
        return found

    def with_value(self, config: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
        """``config`` with one parameter changed; its dependents restart from their defaults."""
        dropped = self.dependents(name)
        return self.resolve({**{k: v for k, v in config.items() if k not in dropped}, name: value})

    def canonical(self, config: dict[str, Any]) -> dict[str, Any]:
        """Searcher output -> the family's hyperparameters (Optuna names ``lr@sgd`` become ``lr``)."""
        plain: dict[str, Any] = {}
        for param in self.params:
            if not self.active(param.name, plain):
                continue
            key = param.name
            if param.depends_on and key not in config:
                key = f"{param.name}@{plain[param.depends_on]}"
            plain[param.name] = config[key] if key in config else self.choice(param.name, plain).default
            if param.kind == "int":
                plain[param.name] = int(plain[param.name])
        return plain

    def suggest(self, trial: Any, *, use_ranges: bool = True) -> dict[str, Any]:
        """Optuna define-by-run: sample one configuration on ``trial``; returns canonical names."""
        config: dict[str, Any] = {}
        for param in self.params:
            if not self.active(param.name, config):
                continue
            choice = self.choice(param.name, config)
            optuna_name = f"{param.name}@{config[param.depends_on]}" if param.depends_on else param.name
            if use_ranges and choice.has_range:
                if param.kind == "int":
                    config[param.name] = trial.suggest_int(optuna_name, int(choice.low), int(choice.high), log=choice.log)
                else:
                    config[param.name] = trial.suggest_float(optuna_name, choice.low, choice.high, log=choice.log)
            else:
                config[param.name] = trial.suggest_categorical(optuna_name, list(choice.values))
        return config

    def optuna_params(self, config: dict[str, Any]) -> dict[str, Any]:
        """A canonical config in :meth:`suggest`'s Optuna names (``lr`` under SGD is ``lr@sgd``), for enqueueing it."""
        resolved = self.resolve(config)
        return {(f"{name}@{resolved[self.by_name[name].depends_on]}" if self.by_name[name].depends_on else name): value
                for name, value in resolved.items()}

    def describe(self) -> str:
        lines = [f"{self.family} space from {self.source}: {len(self.params)} parameters"]
        for param in self.params:
            cases = ", ".join(
                f"{'' if case is None else f'{param.depends_on}={case}: '}{list(c.values)} (default {c.default})"
                for case, c in param.choices.items()
            )
            lines.append(f"  {param.name}: {cases}")
        return "\n".join(lines)
