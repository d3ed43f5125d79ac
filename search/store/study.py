"""One study's files: every one is read and written here, and nowhere else.

A study lives in ``<runs dir>/<study>/``::

    study.json        what the study is (family, strategy, space, data, settings); checked on resume
    .lock             held by the driver running it (a second driver is refused)
    trials.parquet    one row per trial            (search.store.results documents the schema)
    epochs.parquet    one row per trial per epoch
    final.parquet     the final stage: one row per re-trained (configuration, seed) (search.runner.final)
    summary.json      best trial, baselines, counts by status, wall time, the final stage
    greedy_state.json greedy only: the coordinate-descent state
    optuna.db         Optuna strategies only: the Optuna storage (SQLite) unless --storage says otherwise
    val_data.npz      the validation images and maps (for dashboards' galleries)
    trials/<key>/     per trial: latest.pt, previous.pt, best.pt, predictions.npz (trainables.checkpoints)
    ray/              Ray Tune's own files, one folder per driver run

The runs folder may be a bucket (``s3://bucket/prefix``): every file goes through a
:class:`~trainables.storage.Location`, whole or not at all, and every node reads and writes
the same objects. Ray Tune's own files (``ray/``) go there too (``storage_filesystem``).

Every write is atomic (:mod:`trainables.storage` on a local disk, one upload in a bucket). The
driver holds a local study with a lock file; a bucket has no file locks, so a bucket study is
held by the lease in its ``--storage`` database (:mod:`search.store.lease`), as is every study
shared through a database.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from search.errors import StudyError
from trainables.opening import open_location
from trainables.storage import Location, is_database_url, location_of, read_arrays, write_arrays

STUDY_FORMAT = 1


class JsonFile:
    """One JSON file of a study, written atomically (picklable: a searcher that holds one travels with Ray)."""

    def __init__(self, path: Location | str | Path, *, crash: str | None = None, fsync: bool = False,
                 sort_keys: bool = True) -> None:
        self.path = path if isinstance(path, Location) else location_of(path)
        self.crash, self.fsync, self.sort_keys = crash, fsync, sort_keys

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> Any:
        return json.loads(self.path.read_text())

    def write(self, payload: Any) -> None:
        text = json.dumps(payload, indent=2, sort_keys=self.sort_keys, default=str) + "\n"
        self.path.write_text(text, crash=self.crash, fsync=self.fsync)

    def __str__(self) -> str:
        return str(self.path)


class StudyStore:
    """The files of the study ``name`` under ``runs_dir`` (a local folder, or a bucket's URI)."""

    def __init__(self, runs_dir: str | Path | Location, name: str) -> None:
        self.name = name
        runs = runs_dir if isinstance(runs_dir, Location) else open_location(runs_dir)
        self.root = runs / name
        self.record = JsonFile(self.root / "study.json", crash="study-json-tmp")
        self.summary = JsonFile(self.root / "summary.json", crash="study-json-tmp")

    @classmethod
    def at(cls, folder: str | Path) -> "StudyStore":
        """The store of an existing study folder or URI (dashboards, predict)."""
        root = open_location(folder, what="the study")
        return cls(root.parent, root.name)

    def __str__(self) -> str:
        return str(self.root)

    @property
    def in_bucket(self) -> bool:
        return not self.root.is_local

    def exists(self) -> bool:
        return self.root.is_dir()

    def create(self) -> None:
        """Make the folder (if new) and prove it writable; refuse with a clear message otherwise."""
        probe = self.root / ".write-test"
        try:
            self.root.make_dirs()
            probe.write_bytes(b"ok")
            probe.delete()
        except OSError as err:
            raise StudyError(f"cannot write to the study folder {self.root} ({err.strerror or str(err).splitlines()[0]}); "
                             "choose a writable --runs-dir with free space.") from None

    @contextmanager
    def lock(self, storage: str | None = None, say: Callable[[str], None] = print) -> Iterator[None]:
        """Exclusive use of the study: a lock file released by the OS even if the driver is killed, or, for a
        study in a bucket (which has no file locks), the lease in the ``storage`` database."""
        if self.in_bucket:
            if not is_database_url(storage):
                raise StudyError(f"a study in a bucket ({self.root}) needs --storage with a database URL "
                                 "(postgresql://USER@HOST/DB): a bucket has no file lock, and the database's lease "
                                 "keeps a second driver off the study (and holds the Optuna strategies' study).")
            from search.store.lease import take_lease

            lease = take_lease(storage, f"bucket:{self.root}", say)
            try:
                yield
            finally:
                lease.release()
            return
        with open(self.root.local / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise StudyError(f"study folder {self.root} is in use by another driver (pid {holder}); "
                                 "wait for it to finish, or use another --study.") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield

    # -- what the study is ------------------------------------------------------------

    def read_record(self) -> dict[str, Any] | None:
        """study.json, or None for a new study; a damaged one is refused, never overwritten."""
        if not self.record.exists():
            return None
        try:
            return self.record.read()
        except json.JSONDecodeError as err:
            raise StudyError(f"{self.record} is not valid JSON ({err}); restore it or use another --study.") from None

    def write_record(self, record: dict[str, Any]) -> None:
        self.record.write(record)

    def read_summary(self) -> dict[str, Any] | None:
        return self.summary.read() if self.summary.exists() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary.write(summary)

    def state_file(self, name: str) -> JsonFile:
        """A strategy's own state (greedy_state.json), fsynced: a resumed search continues from it."""
        return JsonFile(self.root / name, crash="greedy-state-tmp", fsync=True, sort_keys=False)

    # -- data, tables, checkpoints ------------------------------------------------------

    def write_val_data(self, images: Any, maps: Any, stems: list[str]) -> None:
        write_arrays(self.root / "val_data.npz", images=images, maps=maps, stems=stems)

    def read_val_data(self) -> dict[str, Any] | None:
        """The validation images, maps and stems the study was made with (None if absent)."""
        return read_arrays(self.root / "val_data.npz")

    def read_table(self, name: str):
        """A Parquet file of the study as a pyarrow Table (None if absent)."""
        import pyarrow.parquet as pq

        where = self.root / name
        if not where.is_file():
            return None
        return pq.read_table(where.path, filesystem=where.fs) if not where.is_local else pq.read_table(where.local)

    def write_table(self, name: str, rows: list[dict[str, Any]], schema) -> None:
        """Rows as Parquet, replacing the file whole."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=schema)
        (self.root / name).write(lambda handle: pq.write_table(table, handle), crash="parquet-tmp", fsync=True)

    @property
    def checkpoint_root(self) -> str:
        """The folder of the trials' checkpoint folders, as recorded in every trial's config (a path or a URI)."""
        return str(self.trials_root)

    @property
    def trials_root(self) -> Location:
        """The folder of the trials' checkpoint folders."""
        return self.root / "trials"

    def trial_folder(self, trial_id: str, config: dict[str, Any] | None = None) -> Location:
        """A trial's folder under ``trials/``; ``config``, the trial's flat config, names a population member's
        folder instead (trainables.config.checkpoint_folder)."""
        from trainables.config import checkpoint_folder

        return self.root / "trials" / checkpoint_folder(trial_id, config)

    def trial_checkpoints(self, trial_id: str):
        """A trial's checkpoint folder (trainables.checkpoints.TrialStore)."""
        from trainables.checkpoints import TrialStore

        return TrialStore(self.trial_folder(trial_id))

    def best_checkpoint(self, trial_id: str, config: dict[str, Any] | None = None) -> Location:
        """Where a trial's best.pt is (the networks of its best validation epoch); ``config`` as for trial_folder."""
        return self.trial_folder(trial_id, config) / "best.pt"

    def has_trial_folder(self, trial_id: str) -> bool:
        return self.trial_folder(trial_id).is_dir()

    def ray_storage(self) -> tuple[str, Any]:
        """Ray Tune's ``storage_path`` and ``storage_filesystem`` (None: the local disk): its experiment
        folders, one per driver run."""
        where = self.root / "ray"
        return (str(where.local), None) if where.is_local else (where.path, where.fs)

    def optuna_url(self) -> str:
        """The default Optuna storage: a SQLite file in the study folder (a bucket study must name a database)."""
        if self.in_bucket:
            raise StudyError(f"a study in a bucket ({self.root}) keeps its Optuna study in a database: give --storage "
                             "postgresql://USER@HOST/DB (SQLite cannot live in a bucket).")
        return f"sqlite:///{self.root.local / 'optuna.db'}"

    def read_predictions(self, trial_id: str, config: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """A trial's stored predictions on the validation split (predictions.npz), or None (``config`` as for
        trial_folder)."""
        return read_arrays(self.trial_folder(trial_id, config) / "predictions.npz")
