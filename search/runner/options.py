"""What a search is asked to do: the command line's options, the presets, and their checks.

:class:`SearchOptions` is the search's one shape of its options (``python -m search.run`` fills
it from the command line, a notebook or a benchmark builds it directly). :func:`validate_options`
refuses bad input before anything starts, with one message that says how to fix it.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from models.registry import Registry
from search.errors import StudyError
from search.strategies import STRATEGIES, Strategy, find_strategy
from search.strategies.base import DOMAINS

# Ray Tune's trial schedulers --scheduler may name: name -> (plan, results, search) -> scheduler (search/runner/tuning.py).
SCHEDULERS = Registry("--scheduler", {"asha": "search.runner.tuning:asha", "none": "search.runner.tuning:no_early_stopping"})

if TYPE_CHECKING:
    from search.space import Space
    from trainables.families import FamilyCard


@dataclass(frozen=True)
class Preset:
    """A budget: how long trials train, how big models are, how much data they see.

    ``epochs`` is a floor. With ``min_images`` a trial also sees at least that many training
    images (epochs x training pairs), so a small dataset is trained as much as a large one:
    300 pairs under the ``cpu`` preset train for 35 epochs, not 8 (a few epochs of 300 pairs taught
    an autoencoder nothing but to paint black). ASHA's grace period grows in proportion.
    """

    name: str
    epochs: int
    width_divisor: int
    samples: int
    grace_period: int
    reduction_factor: int
    n_train: int | None  # None: the whole split
    n_val: int | None
    train_eval_size: int
    max_blocks: int | None = None  # greedy: only the first N parameters of the order
    description: str = ""
    min_images: int | None = None  # training images every trial sees at least (None: epochs alone)

    def epochs_for(self, n_train: int) -> int:
        """Epochs per trial on a training split of ``n_train`` pairs."""
        if not self.min_images:
            return self.epochs
        return max(self.epochs, math.ceil(self.min_images / max(n_train, 1)))

    def grace_for(self, epochs: int) -> int:
        """ASHA's grace period, scaled with the epochs a dataset's size asks for."""
        return max(1, min(epochs, round(self.grace_period * epochs / self.epochs)))


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("thesis", 100, 1, 100, 10, 3, None, None, 320,
           description="the report's budget: 100 epochs, full widths, all data"),
    Preset("cpu", 8, 4, 16, 3, 2, None, None, 160, min_images=8 * 1280,
           description="a whole search on two CPU cores: widths / 4, 8 epochs "
                       "(at least 10,240 training images per trial)"),
    Preset("smoke", 2, 16, 4, 1, 2, 64, 32, 32, max_blocks=3,
           description="about a minute, for tests: widths / 16, 64+32 pairs, 2 epochs, 3 greedy blocks"),
)}


@dataclass(init=False)
class SearchOptions:
    """The search's options. Those of the strategy (``population`` for pbt, ``greedy_margin`` for greedy: each
    strategy's :attr:`~search.strategies.base.Strategy.options`) are given by name like the others, kept in
    :attr:`strategy_options`, and read as attributes (their strategy's default when not given)."""

    strategy: str | Strategy  # a name of search.strategies.STRATEGIES, or a Strategy object (a benchmark's variant)
    model: str
    study: str | None = None
    space_file: str | None = None
    data: str | None = None
    val_share: float | None = None  # no test split: the training share held out for validation (None: default/recorded)
    preset: str | Preset | None = None  # a name of PRESETS, or a Preset (a benchmark's size); None: by the hardware
    epochs: int | None = None
    samples: int | None = None
    budget_epochs: int | None = None  # stop proposing trials once this many epochs (all trials together) are spent
    domain: str | None = None  # grid | ranges (None: the strategy's default, or what the study was started with)
    gpus_per_trial: float | str | None = None  # a number, "auto" (search.runner.packing), None: auto with GPUs, else 0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    address: str | None = None
    storage: str | None = None
    runs_dir: str = "runs"
    seed: int = 0
    resume: bool = False
    scheduler: str = "asha"
    grace_period: int | None = None
    reduction_factor: int | None = None
    max_failures: int = 1
    final_top_k: int = 3
    final_seeds: int = 3
    size: int = 64
    verbose: bool = False
    precision: str = "auto"  # CUDA: trainables/device.py
    channels_last: str = "auto"
    compile: str = "auto"
    cuda_graphs: str = "auto"
    mlflow: str | None = None  # a tracking server (None: MLFLOW_TRACKING_URI if set, else no tracking)
    store_retry: float | None = None  # seconds a bucket or database that stops answering is waited for (None: 300)
    strategy_options: dict[str, Any] = field(default_factory=dict)  # the strategy's own, as given

    def __init__(self, strategy: str | Strategy, model: str, **given: Any) -> None:
        self.strategy, self.model = strategy, model
        for item in fields(self):
            if item.name in ("strategy", "model"):
                continue
            if item.name in given:
                setattr(self, item.name, given.pop(item.name))
            else:
                setattr(self, item.name, item.default_factory() if item.default_factory is not MISSING else item.default)
        self.strategy_options = {**self.strategy_options, **given}  # checked against the strategy's (validate)

    def __getattr__(self, name: str) -> Any:  # a strategy's option: as given, else its strategy's default
        given = self.__dict__.get("strategy_options", {})
        if name in given:
            return given[name]
        if "strategy" in self.__dict__:
            defaults = self.strategy_object.option_defaults()
            if name in defaults:
                return defaults[name]
        raise AttributeError(f"SearchOptions has no option {name!r}")

    @property
    def strategy_object(self) -> Strategy:
        return find_strategy(self.strategy)

    @property
    def strategy_name(self) -> str:
        return self.strategy_object.name


def find_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise StudyError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[preset]


def resolve_family(options: SearchOptions) -> "FamilyCard":
    """The family --model names (a name or an alias)."""
    from trainables.families import FAMILIES, family_card

    if options.model not in FAMILIES:
        raise StudyError(f"unknown --model {options.model!r}; choose one of {FAMILIES.choices()}.")
    return family_card(options.model)


def study_name(options: SearchOptions) -> str:
    return options.study or f"{options.strategy_name}-{resolve_family(options).name}"


def validate_options(options: SearchOptions) -> None:
    """Cheap checks before anything starts; raises StudyError."""
    resolve_family(options)
    strategy = options.strategy_object
    if options.preset is not None:
        find_preset(options.preset)
    if options.scheduler not in SCHEDULERS:
        raise StudyError(f"unknown --scheduler {options.scheduler!r}; choose one of {SCHEDULERS.choices()}.")
    if options.domain is not None and options.domain not in DOMAINS:
        raise StudyError(f"unknown --domain {options.domain!r}; choose one of {', '.join(DOMAINS)}.")
    strategy.check(options)
    _check_counts(options)
    _check_resources(options)
    if options.size < 16 or options.size % 32:
        raise StudyError(f"--size must be a multiple of 32 (the UNet halves it five times), got {options.size}.")
    from trainables.storage import is_database_url, is_uri

    if options.data and not is_uri(options.data):  # a bucket is checked when the driver opens it
        from trainables.data import check_data_folder

        check_data_folder(options.data, layout=True)

    if is_uri(options.runs_dir):  # the bucket itself is asked when the driver opens it
        from trainables.opening import check_uri

        check_uri(options.runs_dir)
    from search.runner.addresses import check_reachable, cluster_address

    address, named_by = cluster_address(options)
    if address:
        check_reachable(address, named_by)
    if is_uri(options.runs_dir) and not is_database_url(options.storage):
        raise StudyError(f"--runs-dir {options.runs_dir} is a bucket, which has no file lock: give --storage with a "
                         "database URL (postgresql://USER@HOST/DB). Its lease keeps a second driver off the study, and "
                         "the Optuna strategies keep their study there (SQLite cannot live in a bucket).")
    if options.storage:
        check_storage_url(options.storage)
    from search.runner.tracking import check_tracking, tracking_uri

    if tracking_uri(options.mlflow):
        check_tracking(tracking_uri(options.mlflow))
    if options.resume:
        from search.store.study import StudyStore

        if not StudyStore(options.runs_dir, study_name(options)).exists():
            raise StudyError(f"--resume: no study {study_name(options)!r} in {options.runs_dir}; start it without --resume.")



def check_storage_url(url: str) -> None:
    """A --storage that is a database URL, and (a database server's) one that answers within 5 s."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy's ArgumentError, ValueError: all "not a URL"
        raise StudyError(f"--storage {url!r} is not a database URL; give postgresql://USER@HOST:PORT/DB (or "
                         "sqlite:///FILE for one machine).") from None
    from trainables.storage import is_database_url
    from search.store.lease import safe_url

    if not is_database_url(url):
        return  # a SQLite file: made when the study opens it
    try:
        engine = create_engine(parsed, connect_args={"connect_timeout": 5} if parsed.get_backend_name().startswith(
            "postgres") else {})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except ModuleNotFoundError as err:
        raise StudyError(f"--storage {safe_url(url)} needs the database's driver ({err.name}): pip install -e "
                         "'.[postgres]'.") from None
    except Exception as err:  # noqa: BLE001 - any failure to connect is the same message to the user
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:200]
        raise StudyError(f"cannot reach the database of --storage {safe_url(url)} ({reason}); check that the server "
                         "is up and the URL (user, host, port, database).") from None


Checked = tuple["FamilyCard", "Space"]


def check(options: SearchOptions) -> Checked:
    """Everything that can be checked before anything starts, with nothing heavy imported (no torch, Ray or
    Optuna): the options, and the study file (its family, its plug-ins' names, what the strategy needs of it).
    Returns the family's card and the study's space; raises StudyError or StudyFileError with one message."""
    from search.space import StudyFileError
    from search.study_file import load_space

    validate_options(options)
    family = resolve_family(options)
    space = load_space(options.space_file or family.name)
    if space.family != family.name:
        raise StudyFileError(f"{space.source} is a {space.family} study file but --model is {family.name}.")
    options.strategy_object.check_space(space, options)
    _check_existing_study(options, family, space)
    return family, space


def _check_existing_study(options: SearchOptions, family: "FamilyCard", space: "Space") -> None:
    """An existing study of this name made with another model, strategy or (a named) study file is refused here,
    before Ray starts; everything else that makes a study is checked when the driver has the data (plan.py)."""
    from trainables.storage import is_uri
    from search.store.study import StudyStore

    if is_uri(options.runs_dir):
        return  # the bucket is opened (and checked) by the driver, once
    store = StudyStore(options.runs_dir, study_name(options))
    record = store.read_record() if store.exists() else None
    if record is None:
        return
    this = {"family": family.name, "strategy": options.strategy_name}
    if options.space_file is not None:
        this["space_fingerprint"] = space.fingerprint
    differences = [f"{k}: study has {record.get(k)!r}, this run {v!r}" for k, v in this.items() if record.get(k) != v]
    if differences:
        raise StudyError(f"study {store.name} in {store.root} was created with other settings, and mixing them would "
                         "corrupt it (" + "; ".join(differences) + "). Use the same options, or a new --study name.")


def _check_counts(options: SearchOptions) -> None:
    for name in ("epochs", "samples", "budget_epochs", "max_concurrent", "grace_period"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise StudyError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}.")
    if options.reduction_factor is not None and options.reduction_factor < 2:
        raise StudyError(f"--reduction-factor must be at least 2, got {options.reduction_factor}.")
    if options.val_share is not None and not 0.0 <= options.val_share < 1.0:
        raise StudyError(f"--val-share is a share of the training pairs in [0, 1) (0.2: a fifth held out for "
                         f"validation; 0: none, the data's val split is used and there is no test split), "
                         f"got {options.val_share}.")
    if options.store_retry is not None and options.store_retry < 0:
        raise StudyError(f"--store-retry is the seconds a bucket or database that stops answering is waited for "
                         f"(0: not at all), got {options.store_retry}.")
    for name in ("final_top_k", "final_seeds", "max_failures"):
        if getattr(options, name) < 0:
            raise StudyError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(options, name)}.")


def _check_resources(options: SearchOptions) -> None:
    from trainables.config import DEVICE_SWITCHES, PRECISIONS, SWITCHES

    if options.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial must be positive, got {options.cpus_per_trial}.")
    if isinstance(options.gpus_per_trial, str) and options.gpus_per_trial != "auto":
        raise StudyError(f"--gpus-per-trial is a number of GPUs (1, 0.25) or auto, got {options.gpus_per_trial!r}.")
    gpus = options.gpus_per_trial if not isinstance(options.gpus_per_trial, str) else None
    if gpus is not None and gpus < 0:
        raise StudyError(f"--gpus-per-trial must be 0 or more, got {gpus}.")
    if gpus and gpus > 1 and not float(gpus).is_integer():
        raise StudyError("--gpus-per-trial above 1 must be a whole number (Ray packs fractions only below one GPU).")
    if options.precision not in PRECISIONS:
        raise StudyError(f"--precision must be one of {', '.join(PRECISIONS)}, got {options.precision!r}.")
    for name in DEVICE_SWITCHES:
        if getattr(options, name) not in SWITCHES:
            raise StudyError(f"--{name.replace('_', '-')} must be one of {', '.join(SWITCHES)}, "
                             f"got {getattr(options, name)!r}.")


__all__ = ["PRESETS", "SCHEDULERS", "STRATEGIES", "Preset", "SearchOptions", "find_preset", "resolve_family",
           "study_name", "validate_options"]
