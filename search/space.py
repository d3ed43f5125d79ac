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
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from trainables.config import check_choice
from trainables.errors import InputError
from trainables.families import FAMILIES, family_card

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
HISTORY_DIR = STUDIES_DIR / "history"  # earlier versions of the study files: <family>-<fingerprint>.toml
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


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


def study_path(name_or_path: str) -> Path:
    """A study file by path, or by name inside ``studies/`` (``gan`` -> studies/gan.toml)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    name = FAMILIES.canonical(name_or_path) if name_or_path in FAMILIES else name_or_path
    return STUDIES_DIR / f"{name}.toml"


def load_space(name_or_path: str) -> Space:
    """Read and validate a study file; raises StudyFileError naming what is wrong."""
    path = study_path(name_or_path)
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in STUDIES_DIR.glob("*.toml")))
        raise StudyFileError(f"study file {path} not found; use one of: {available}, or a path to a .toml file.")
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudyFileError(f"{path}: not valid TOML ({err}).") from None
    space = parse_space(raw, str(path))
    space.text = text
    return space


def recorded_space(record: dict[str, Any] | None, current: Space, *, explicit: bool,
                   history: Path = HISTORY_DIR) -> tuple[Space, str | None]:
    """The space a resumed study continues with, and a line saying so when it is not the study file's.

    A study keeps the space it was made with. When the default study file has changed since, the
    study goes on with the recorded space: ``study.json``'s ``space``, or, for a study made before
    spaces were recorded, the earlier version of the study file kept in ``studies/history/`` under
    its fingerprint. A study file named with ``--space`` (``explicit``) is never replaced: if it
    differs, the study's identity check refuses it, as before.
    """
    if (record is None or explicit or record.get("family") != current.family
            or record.get("space_fingerprint") in (None, current.fingerprint)):
        return current, None  # the same space, or another model or file: the identity check decides
    raw, source = record.get("space"), "recorded in the study's study.json"
    if record.get("space_toml"):
        raw = tomllib.loads(record["space_toml"])
    if raw is None:
        earlier = history / f"{current.family}-{record['space_fingerprint']}.toml"
        if not earlier.is_file():
            return current, None  # unknown: the identity check refuses, naming both fingerprints
        raw, source = tomllib.loads(earlier.read_text()), str(earlier)
    space = parse_space(raw, source)
    if space.fingerprint != record["space_fingerprint"]:
        return current, None
    return space, (f"study {record.get('study')}: the study file {current.source} changed since the study was made; "
                   f"it continues with the space it was made with ({source})")


def _fail(source: str, message: str) -> StudyFileError:
    return StudyFileError(f"{source}: {message}")


def _check_value(source: str, where: str, kind: str, value: Any) -> Any:
    expected = _TYPES[kind]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
        raise _fail(source, f"{where}: {value!r} is not a {kind}.")
    return value


def _parse_choice(source: str, where: str, kind: str, table: dict[str, Any]) -> Choice:
    unknown = set(table) - {"values", "default", "range", "log"}
    if unknown:
        raise _fail(source, f"{where}: unknown keys {sorted(unknown)}; allowed: values, default, range, log.")
    values = table.get("values")
    if not isinstance(values, list) or not values:
        raise _fail(source, f"{where}: 'values' must be a non-empty list of candidates.")
    values = [_check_value(source, f"{where}.values", kind, v) for v in values]
    if len(set(map(repr, values))) != len(values):
        raise _fail(source, f"{where}: 'values' has duplicates.")
    if "default" not in table:
        raise _fail(source, f"{where}: 'default' is missing.")
    default = _check_value(source, f"{where}.default", kind, table["default"])
    if default not in values:
        raise _fail(source, f"{where}: default {default!r} is not among its values {values}; add it or change it.")
    low = high = None
    log = bool(table.get("log", False))
    if "range" in table:
        bounds = table["range"]
        if kind not in ("int", "float") or not (isinstance(bounds, list) and len(bounds) == 2):
            raise _fail(source, f"{where}: 'range' must be [low, high] on a numeric parameter.")
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise _fail(source, f"{where}: range low {low} must be below high {high}.")
        if log and low <= 0:
            raise _fail(source, f"{where}: a log range needs low > 0, got {low}.")
        outside = [v for v in values if not low <= v <= high]
        if outside:
            raise _fail(source, f"{where}: values {outside} lie outside range [{low}, {high}].")
    elif log:
        raise _fail(source, f"{where}: 'log' needs a 'range'.")
    return Choice(tuple(values), default, low, high, log)


CORE_KEYS = ("family", "description", "order", "params", "fixed")  # every study file's; a strategy may add its own


def parse_space(raw: dict[str, Any], source: str = "<study>") -> Space:
    from search.strategies import study_sections

    unknown = set(raw) - set(CORE_KEYS) - set(study_sections())
    if unknown:
        raise _fail(source, f"unknown top-level keys {sorted(unknown)}; allowed: "
                            f"{', '.join([*CORE_KEYS, *study_sections()])}.")
    for name in set(raw) - set(CORE_KEYS):
        if not isinstance(raw[name], dict):
            raise _fail(source, f"[{name}] must be a table.")
    family = raw.get("family")
    if family not in FAMILIES:
        raise _fail(source, f"'family' must be one of {FAMILIES.choices()}, got {family!r}.")
    family_cls = family_card(family)
    family, config_cls = family_cls.name, family_cls.config_cls
    kinds = {f.name: f.type for f in fields(config_cls)}
    params_raw = raw.get("params")
    if not isinstance(params_raw, dict) or not params_raw:
        raise _fail(source, "needs a [params.NAME] table for at least one parameter.")
    order = raw.get("order", list(params_raw))
    if not isinstance(order, list) or len(set(order)) != len(order):
        raise _fail(source, "'order' must be a list of parameter names without repeats.")
    missing = [n for n in params_raw if n not in order]
    extra = [n for n in order if n not in params_raw]
    if missing or extra:
        raise _fail(source, f"'order' and [params] disagree: not in order {missing}, no [params] table for {extra}.")
    seen: dict[str, Param] = {}
    for name in order:
        if name not in kinds:
            raise _fail(source, f"unknown parameter {name!r} for family {family}; known: {', '.join(sorted(kinds))}.")
        seen[name] = _parse_param(source, name, kinds[name], dict(params_raw[name]), seen)
    fixed = _parse_fixed(source, family, dict(raw.get("fixed", {})), kinds, seen)
    space = Space(family, list(seen.values()), fixed, source, raw)
    try:  # the defaults must make a valid config of the family
        config_cls(**space.default_config())
    except (TypeError, ValueError) as err:
        raise _fail(source, f"the defaults do not form a valid {family} config: {err}") from None
    for param, case, value in ((p, c, v) for p in space.params for c, o in p.choices.items() for v in o.values):
        try:  # every value a search may try names a plug-in that exists: a misspelling is refused here
            check_choice(config_cls, param.name, value)
        except ValueError as err:
            raise _fail(source, f"params.{param.name}" + (f".cases.{case}" if case is not None else "") + f": {err}.")
    return space


def _parse_when(source: str, where: str, when_raw: Any, seen: dict[str, Param]) -> dict[str, tuple[Any, ...]] | None:
    if when_raw is None:
        return None
    if not isinstance(when_raw, dict) or not when_raw:
        raise _fail(source, f"{where}.when must be a table like {{ optimizer = [\"adam\"] }}.")
    when = {}
    for parent, allowed in when_raw.items():
        if parent not in seen:
            raise _fail(source, f"{where}.when refers to {parent!r}, which must come earlier in 'order'.")
        allowed = tuple(allowed if isinstance(allowed, list) else [allowed])
        bad = [a for a in allowed if not any(a in c.values for c in seen[parent].choices.values())]
        if bad:
            raise _fail(source, f"{where}.when: {bad} are not values of {parent}.")
        when[parent] = allowed
    return when


def _parse_cases(source: str, where: str, kind: str, table: dict[str, Any], depends_on: str,
                 seen: dict[str, Param]) -> dict[Any, Choice]:
    if depends_on not in seen:
        raise _fail(source, f"{where}.depends_on {depends_on!r} must be a parameter earlier in 'order'.")
    cases_raw = table.pop("cases", None)
    if table:
        raise _fail(source, f"{where}: with depends_on, put values/default/range under cases.VALUE, not {sorted(table)}.")
    parent_values = [v for c in seen[depends_on].choices.values() for v in c.values]
    if not isinstance(cases_raw, dict):
        raise _fail(source, f"{where}: depends_on needs one [{where}.cases.VALUE] table per value of {depends_on}.")
    absent = [v for v in parent_values if str(v) not in cases_raw]
    strange = [k for k in cases_raw if k not in map(str, parent_values)]
    if absent or strange:
        raise _fail(source, f"{where}.cases: missing cases {absent}, unknown cases {strange} (values of {depends_on}: {parent_values}).")
    return {v: _parse_choice(source, f"{where}.cases.{v}", kind, cases_raw[str(v)]) for v in parent_values}


def _parse_param(source: str, name: str, kind: str, table: dict[str, Any], seen: dict[str, Param]) -> Param:
    """One ``[params.NAME]`` table: its candidates (per case of its parent), and when it exists."""
    where = f"params.{name}"
    depends_on = table.pop("depends_on", None)
    when = _parse_when(source, where, table.pop("when", None), seen)
    if depends_on is not None:
        choices = _parse_cases(source, where, kind, table, depends_on, seen)
    else:
        choices = {None: _parse_choice(source, where, kind, table)}
    return Param(name, kind, choices, depends_on, when)


def _parse_fixed(source: str, family: str, fixed: dict[str, Any], kinds: dict[str, str],
                 seen: dict[str, Param]) -> dict[str, Any]:
    bad_fixed = [k for k in fixed if k not in kinds]
    if bad_fixed:
        raise _fail(source, f"[fixed] has unknown settings {bad_fixed} for family {family}.")
    overlap = [k for k in fixed if k in seen]
    if overlap:
        raise _fail(source, f"{overlap} are both searched and [fixed]; keep one.")
    return {k: _check_value(source, f"fixed.{k}", kinds[k], v) for k, v in fixed.items()}
