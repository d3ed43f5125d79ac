"""A study in MLflow: the study as a parent run, each trial as a nested run (``--mlflow URI``, or
``MLFLOW_TRACKING_URI`` when it is set).

Each trial's run has its hyperparameters (params), every epoch's metrics (``step`` = epoch) and its status (the run's
status, and the tag ``memsearch.status``: completed, stopped, diverged, errored). The parent has the study's settings,
the search's best val L1, the final stage's test L1 with its 95% interval, and ``beats_baseline``.

Why not Ray Tune's ``MLflowLoggerCallback``: it logs by Ray trial as results arrive, and a resumed study's trials get
new Ray ids and replay their epochs, so a resumed study would log them twice; and it knows nothing of the study, its
final stage or its baselines. This logs from the study's own records (the rows of trials.parquet and epochs.parquet)
once a trial has ended, keyed by the trial key: the parent run's id is kept in ``study.json``, a resumed study
continues it, and a trial it already holds is never logged again (one a killed driver left half logged is logged
anew). Everything runs in the driver; a server that stops answering mid-study costs a line, not the search: what
was not logged is logged when the study resumes.
"""

from __future__ import annotations

import math
import os
from typing import Any

from search.errors import StudyError

TRIAL_TAG, STATUS_TAG = "memsearch.trial_id", "memsearch.status"
EXPERIMENT = "memsearch"
_BATCH = 1000  # MLflow's log_batch takes at most 1000 metrics (and 100 params, 100 tags) a request
_RUN_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "diverged": "FAILED", "errored": "FAILED"}


def _reason(err: Exception, width: int = 160) -> str:
    """What went wrong, in one line: the error's last line, or its type where it has no message."""
    from search.runner.console import last_line  # here: the option check imports this module before anything heavy

    return last_line(str(err))[:width] if str(err).strip() else type(err).__name__


def tracking_uri(option: str | None) -> str | None:
    """``--mlflow``, else ``MLFLOW_TRACKING_URI`` (MLflow's own variable), else None (no tracking)."""
    return option or os.environ.get("MLFLOW_TRACKING_URI") or None


def _client(uri: str):
    # A server that stops answering must cost seconds, not MLflow's default minutes of retries (the user's own
    # settings win).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the search prints its own lines
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise StudyError("--mlflow needs the MLflow client: pip install -e '.[mlflow]'") from None
    return MlflowClient(tracking_uri=uri)


def check_tracking(uri: str) -> None:
    """One clear message before Ray starts when the tracking server cannot be reached."""
    try:
        _client(uri).search_experiments(max_results=1)
    except StudyError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to reach it is the same message to the user
        reason = _reason(err, 200)
        raise StudyError(f"cannot reach the MLflow tracking server at {uri} ({reason}); start it, or drop --mlflow "
                         "(and unset MLFLOW_TRACKING_URI).") from None


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ms(when: Any) -> int:
    return int(when.timestamp() * 1000) if hasattr(when, "timestamp") else 0


class MLflowTracker:
    """The study's parent run and its trials' nested runs on one tracking server (picklable: Ray Tune pickles its
    callbacks, which call :meth:`trial_finished`; the client is made again where it is used)."""

    def __init__(self, uri: str, results: Any, say=print) -> None:
        self.uri, self.results, self.say = uri, results, say
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.logged: set[str] = set()
        self._client = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def start(self, record: dict[str, Any], store: Any, preset: str) -> None:
        """Continue the parent run ``study.json`` names for this server, or start one (and record it)."""
        client = self.client
        mine = record.get("mlflow") or {}
        if mine.get("tracking_uri") == self.uri and mine.get("run_id") and self._exists(mine["run_id"]):
            self.run_id, self.experiment_id = mine["run_id"], mine["experiment_id"]
            client.update_run(self.run_id, status="RUNNING")
            self.logged = self._logged_trials()
            self.say(f"mlflow: continuing run {self.run_id} at {self.uri} ({len(self.logged)} trials logged)")
            return
        experiment = client.get_experiment_by_name(EXPERIMENT)
        self.experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
        run = client.create_run(self.experiment_id, run_name=record["study"], tags={
            "memsearch.study": record["study"], "memsearch.strategy": record["strategy"],
            "memsearch.family": record["family"], "memsearch.role": "study"})
        self.run_id = run.info.run_id
        params = {"strategy": record["strategy"], "family": record["family"], "preset": preset,
                  "domain": record.get("domain"), "data_fingerprint": record.get("data_fingerprint"),
                  "test_fingerprint": record.get("test_fingerprint"),
                  "data_source": record.get("data_source"), "val_share": record.get("val_share"),
                  **{f"settings.{k}": v for k, v in (record.get("settings") or {}).items()}}
        self._log(self.run_id, params=params)
        record["mlflow"] = {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}
        store.write_record(record)
        self.say(f"mlflow: study run {self.run_id} in experiment {EXPERIMENT!r} at {self.uri}")

    def _exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # noqa: BLE001 - deleted, or from another server's database
            return False

    def _logged_trials(self) -> set[str]:
        """Trial keys of the nested runs already logged whole; a half-logged one (still RUNNING) is deleted."""
        logged, token = set(), None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.run_id}'",
                                           max_results=1000, page_token=token)
            for run in page:
                if run.info.status == "RUNNING":
                    self.client.delete_run(run.info.run_id)
                elif TRIAL_TAG in run.data.tags:
                    logged.add(run.data.tags[TRIAL_TAG])
            token = page.token
            if not token:
                return logged

    def sync(self) -> None:
        """Log every ended trial not yet logged (a resumed study's, recorded by a driver that was killed)."""
        for row in list(self.results.trials.values()):
            self.trial_finished(row)

    def trial_finished(self, row: dict[str, Any]) -> None:
        """A trial has ended: its nested run, once."""
        trial_id, status = row["trial_id"], row.get("status")
        if status not in _RUN_STATUS or trial_id in self.logged or self.run_id is None:
            return
        try:
            self._log_trial(row)
        except Exception as err:  # noqa: BLE001 - tracking must never end a search
            self.say(f"mlflow: trial {trial_id} not logged ({_reason(err)}); "
                     "it is logged when the study resumes")
            return
        self.logged.add(trial_id)

    def _log_trial(self, row: dict[str, Any]) -> None:
        trial_id = row["trial_id"]
        run = self.client.create_run(self.experiment_id, run_name=trial_id, tags={
            "mlflow.parentRunId": self.run_id, TRIAL_TAG: trial_id, STATUS_TAG: row["status"],
            **{f"memsearch.{c}": str(row[c]) for c in self.results.columns if row.get(c) is not None}})
        params = {k[3:]: v for k, v in row.items() if k.startswith("hp_") and v is not None}
        params["epochs_planned"] = row.get("epochs_planned")
        epochs = sorted((r for (tid, _), r in self.results.epochs.items() if tid == trial_id), key=lambda r: r["epoch"])
        metrics = [(name, value, _ms(r.get("reported_at")), int(r["epoch"])) for r in epochs
                   for name, value in r.items() if name not in ("schema_version", "epoch") and _finite(value)]
        self._log(run.info.run_id, params=params, metrics=metrics)
        self.client.set_terminated(run.info.run_id, status=_RUN_STATUS[row["status"]])

    def finish(self, summary: dict[str, Any], finished: bool) -> None:
        """The parent's numbers: the search's best val L1 and the final stage's test L1 with its interval."""
        if self.run_id is None:
            return
        from search.runner.baseline import recommended, study_verdict

        metrics: dict[str, float] = {}
        if _finite(summary.get("best_val_l1")):
            metrics["best_val_l1"] = summary["best_val_l1"]
        final = summary.get("final") or {}
        chosen = recommended(final)
        split = "test" if final.get("has_test") else "val"
        if chosen is not None:
            stat = chosen[f"{split}_l1"]
            metrics.update({f"final_{split}_l1": stat["mean"], f"final_{split}_l1_seeds": stat["n"]})
            if _finite(stat.get("ci95")):
                metrics[f"final_{split}_l1_ci95"] = stat["ci95"]
        verdict = study_verdict(summary)
        if verdict is not None:
            metrics["beats_baseline"] = float(verdict)
        tags = {"beats_baseline": str(verdict).lower() if verdict is not None else "unknown",
                "memsearch.finished": str(finished).lower()}
        try:
            self._log(self.run_id, metrics=[(k, float(v), 0, 0) for k, v in metrics.items() if _finite(v)], tags=tags)
            failed = summary.get("every_trial_errored") or summary.get("every_final_run_errored")  # the command exits 1
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED" if finished else "KILLED")
        except Exception as err:  # noqa: BLE001
            self.say(f"mlflow: the study's numbers were not logged ({_reason(err)})")

    def _log(self, run_id: str, *, params: dict[str, Any] | None = None,
             metrics: list[tuple[str, float, int, int]] | None = None, tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        param_list = [Param(str(k), str(v)) for k, v in (params or {}).items() if v is not None]
        tag_list = [RunTag(k, v) for k, v in (tags or {}).items()]
        metric_list = [Metric(k, v, ts, step) for k, v, ts, step in (metrics or [])]
        for start in range(0, max(len(param_list), len(tag_list)), 100):
            self.client.log_batch(run_id, params=param_list[start:start + 100], tags=tag_list[start:start + 100],
                                  metrics=[])
        for start in range(0, len(metric_list), _BATCH):
            self.client.log_batch(run_id, metrics=metric_list[start:start + _BATCH])
