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

Every write is atomic (:mod:`search.store.atomic`). The lease of a study shared through a
database is a row of its own (:mod:`search.store.lease`).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from search.errors import StudyError
from search.store.atomic import write_atomic, write_json_atomic, write_npz_atomic

STUDY_FORMAT = 1


class JsonFile:
    """One JSON file of a study, written atomically (picklable: a searcher that holds one travels with Ray)."""

    def __init__(self, path: Path, *, crash: str | None = None, fsync: bool = False, sort_keys: bool = True) -> None:
        self.path, self.crash, self.fsync, self.sort_keys = Path(path), crash, fsync, sort_keys

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> Any:
        return json.loads(self.path.read_text())

    def write(self, payload: Any) -> None:
        write_json_atomic(self.path, payload, crash=self.crash, fsync=self.fsync, sort_keys=self.sort_keys)

    def __str__(self) -> str:
        return str(self.path)


class StudyStore:
    """The files of the study ``name`` under ``runs_dir``."""

    def __init__(self, runs_dir: str | Path, name: str) -> None:
        self.name = name
        self.root = Path(runs_dir).expanduser().resolve() / name
        self.record = JsonFile(self.root / "study.json", crash="study-json-tmp")
        self.summary = JsonFile(self.root / "summary.json", crash="study-json-tmp")

    @classmethod
    def at(cls, folder: str | Path) -> "StudyStore":
        """The store of an existing study folder (dashboards, predict)."""
        folder = Path(folder).expanduser().resolve()
        return cls(folder.parent, folder.name)

    def __str__(self) -> str:
        return str(self.root)

    def exists(self) -> bool:
        return self.root.is_dir()

    def create(self) -> None:
        """Make the folder (if new) and prove it writable; refuse with a clear message otherwise."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise StudyError(f"cannot write to the study folder {self.root} ({err.strerror}); "
                             "choose a writable --runs-dir with free space.") from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the study folder; released by the OS even if the driver is killed."""
        handle = open(self.root / ".lock", "a+")
        try:
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
        finally:
            handle.close()

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

    @property
    def val_data_path(self) -> Path:
        return self.root / "val_data.npz"

    def write_val_data(self, images: Any, maps: Any, stems: list[str]) -> None:
        import numpy as np

        write_npz_atomic(self.val_data_path, images=images, maps=maps, stems=np.array(stems))

    def read_val_data(self) -> dict[str, Any] | None:
        """The validation images, maps and stems the study was made with (None if absent)."""
        import numpy as np

        if not self.val_data_path.is_file():
            return None
        with np.load(self.val_data_path) as arrays:
            return {name: arrays[name] for name in arrays.files}

    def table_path(self, name: str) -> Path:
        return self.root / name

    def read_table(self, name: str):
        """A Parquet file of the study as a pyarrow Table (None if absent)."""
        import pyarrow.parquet as pq

        path = self.table_path(name)
        return pq.read_table(path) if path.is_file() else None

    def write_table(self, name: str, rows: list[dict[str, Any]], schema) -> None:
        """Rows as Parquet, replacing the file whole."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=schema)
        write_atomic(self.table_path(name), lambda tmp: pq.write_table(table, tmp), crash="parquet-tmp", fsync=True)

    @property
    def checkpoint_root(self) -> str:
        """The folder of the trials' checkpoint folders (a run setting every trial receives)."""
        return str(self.root / "trials")

    def trial_checkpoints(self, trial_id: str):
        """A trial's checkpoint folder (trainables.checkpoints.TrialStore)."""
        from trainables.checkpoints import TrialStore

        return TrialStore(Path(self.checkpoint_root) / trial_id)

    def best_checkpoint(self, trial_id: str) -> Path:
        """Where a trial's best.pt is (the networks of its best validation epoch)."""
        return Path(self.checkpoint_root) / trial_id / "best.pt"

    def has_trial_folder(self, trial_id: str) -> bool:
        return (Path(self.checkpoint_root) / trial_id).is_dir()

    @property
    def ray_storage(self) -> str:
        """Ray Tune's ``storage_path``: its experiment folders, one per driver run."""
        return str(self.root / "ray")

    def optuna_url(self) -> str:
        """The default Optuna storage: a SQLite file in the study folder."""
        return f"sqlite:///{self.root / 'optuna.db'}"

    def read_predictions(self, trial_id: str) -> dict[str, Any] | None:
        """A trial's stored predictions on the validation split (predictions.npz), or None."""
        import numpy as np

        path = Path(self.checkpoint_root) / trial_id / "predictions.npz"
        if not path.is_file():
            return None
        with np.load(path) as arrays:
            return {name: arrays[name] for name in arrays.files}
