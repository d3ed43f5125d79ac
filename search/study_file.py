"""Study files read into search spaces: a study file's TOML parsed and checked (every mistake refused with one
message naming the file and the fix), found by name in ``studies/``, and the space a study was made with
recovered from its record. The space itself, what the strategies walk and sample, is :mod:`search.space`."""

from __future__ import annotations

import math
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from search.space import CORE_KEYS, HISTORY_DIR, STUDIES_DIR, Choice, Param, Space, StudyFileError
from trainables.config import check_choice, coerce
from trainables.families import FAMILIES, family_card


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
    try:
        return coerce(kind, value)
    except TypeError as err:
        raise _fail(source, f"{where}: {value!r} is not {'an' if kind == 'int' else 'a'} {kind} ({err}).") from None


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
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise _fail(source, f"{where}: 'log' must be true or false (no quotes), got {log!r}.")
    if "range" in table:
        bounds = table["range"]
        if kind not in ("int", "float") or not (isinstance(bounds, list) and len(bounds) == 2):
            raise _fail(source, f"{where}: 'range' must be [low, high] on a numeric parameter.")
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds):
            raise _fail(source, f"{where}: 'range' must be two finite numbers (no quotes), got {bounds!r}.")
        if kind == "int" and not all(float(b).is_integer() for b in bounds):
            raise _fail(source, f"{where}: the range of an int parameter must be whole numbers, got {bounds!r}.")
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
        seen[name] = _parse_param(source, name, kinds[name], dict(params_raw[name]), seen, raw.get("fixed") or {})
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
    _check_candidates(source, space, config_cls)
    return space


def _check_candidates(source: str, space: Space, config_cls: type) -> None:
    """Every value a search may try, and each end of a range, makes a valid config with the defaults (its parent set
    to its case, and to what its ``when`` allows): a p_translation of 1.5 or a width of 0 is refused here, not
    inside a Ray worker as an errored trial."""
    parents = {p.depends_on for p in space.params}
    for param in space.params:
        gate = {parent: allowed[0] for parent, allowed in (param.when or {}).items()}
        for case, choice in param.choices.items():
            # a parent's cases are its values: a range end between them has no case to check with
            ends = (choice.low, choice.high) if choice.has_range and param.name not in parents else ()
            for value in (*choice.values, *ends):
                if param.kind == "int":
                    value = int(value)
                # as a search would make it: the parents that let it exist, the rest defaults where they exist
                config = {**space.fixed, **space.resolve({**gate, **({param.depends_on: case} if case is not None
                                                                     else {}), param.name: value})}
                if config.get(param.name) != value:
                    continue  # its parents' other conditions keep it out of this config: nothing to check
                try:
                    config_cls(**config)
                except (TypeError, ValueError) as err:
                    where = f"params.{param.name}" + (f".cases.{case}" if case is not None else "")
                    raise _fail(source, f"{where}: {value!r} is not a valid value ({err}).") from None


def _fixed_parent(source: str, where: str, key: str, parent: str, fixed: dict[str, Any]) -> StudyFileError | None:
    """The error for a parameter that depends on one moved to [fixed] (its dependence no longer has a choice)."""
    if parent not in fixed:
        return None
    return _fail(source, f"{where}.{key} refers to {parent!r}, which is fixed to {fixed[parent]!r} in [fixed]: give "
                         f"{where} the values (and default) of its case for {fixed[parent]!r} directly and drop its "
                         f"{key}, or search {parent} again.")


def _parse_when(source: str, where: str, when_raw: Any, seen: dict[str, Param],
                fixed: dict[str, Any]) -> dict[str, tuple[Any, ...]] | None:
    if when_raw is None:
        return None
    if not isinstance(when_raw, dict) or not when_raw:
        raise _fail(source, f"{where}.when must be a table like {{ optimizer = [\"adam\"] }}.")
    when = {}
    for parent, allowed in when_raw.items():
        if parent not in seen:
            raise _fixed_parent(source, where, "when", parent, fixed) or _fail(
                source, f"{where}.when refers to {parent!r}, which must come earlier in 'order'.")
        allowed = tuple(allowed if isinstance(allowed, list) else [allowed])
        bad = [a for a in allowed if not any(a in c.values for c in seen[parent].choices.values())]
        if bad:
            raise _fail(source, f"{where}.when: {bad} are not values of {parent}.")
        when[parent] = allowed
    return when


def _parse_cases(source: str, where: str, kind: str, table: dict[str, Any], depends_on: str,
                 seen: dict[str, Param], fixed: dict[str, Any]) -> dict[Any, Choice]:
    if depends_on not in seen:
        raise _fixed_parent(source, where, "depends_on", depends_on, fixed) or _fail(
            source, f"{where}.depends_on {depends_on!r} must be a parameter earlier in 'order'.")
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


def _parse_param(source: str, name: str, kind: str, table: dict[str, Any], seen: dict[str, Param],
                 fixed: dict[str, Any]) -> Param:
    """One ``[params.NAME]`` table: its candidates (per case of its parent), and when it exists."""
    where = f"params.{name}"
    depends_on = table.pop("depends_on", None)
    when = _parse_when(source, where, table.pop("when", None), seen, fixed)
    if depends_on is not None:
        choices = _parse_cases(source, where, kind, table, depends_on, seen, fixed)
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
