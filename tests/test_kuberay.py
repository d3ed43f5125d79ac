"""The KubeRay RayJob manifest (deploy/kuberay/rayjob.yaml): valid against the RayJob CRD of a named KubeRay
release, and its entrypoint read as KubeRay and Ray read it (no Kubernetes runs here).

The entrypoint passes through two shells: KubeRay's submitter runs ``ray job submit ... -- <entrypoint>`` in
``bash -ce`` (KubeRay's BuildJobSubmitCommand), and Ray's job supervisor runs the entrypoint it received (the
arguments after ``--`` joined by ``subprocess.list2cmdline``) with ``shell=True`` on the head pod. The test runs
both through the real shells, with each pod's environment, and parses the result with the search's own parser.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from subprocess import list2cmdline

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "kuberay"
PIN = json.loads((DEPLOY / "crd.json").read_text())
CRD_ENV = "MEMSEARCH_KUBERAY_CRD"


def _rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, "rayjob.yaml holds one RayJob"
    return jobs[0]


def _crd_file() -> Path | None:
    for candidate in (os.environ.get(CRD_ENV), DEPLOY / PIN["file"]):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _strict(schema):
    """The CRD's schema as ``kubectl apply --validate=strict`` reads it: an object's unknown fields are errors, not
    pruned (except where the schema keeps unknown fields)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def test_the_manifest_is_valid_against_the_named_kuberay_release():
    import jsonschema

    crd_file = _crd_file()
    if crd_file is None:
        pytest.skip(f"the RayJob CRD of KubeRay {PIN['release']} ({PIN['repository']} at {PIN['commit'][:12]}, "
                    f"{PIN['path']}) is not on this machine: set {CRD_ENV} to its file")
    assert hashlib.sha256(crd_file.read_bytes()).hexdigest() == PIN["sha256"], f"{crd_file} is not {PIN['release']}'s"
    crd = yaml.safe_load(crd_file.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    validator = jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))
    job = _rayjob()
    assert job["apiVersion"] == f"{crd['spec']['group']}/v1" and job["kind"] == crd["spec"]["names"]["kind"]
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(job)]
    assert not errors, errors
    # The validation can fail: a misspelled field and a wrong type are refused.
    typo = copy.deepcopy(job)
    typo["spec"]["entryPoint"] = typo["spec"].pop("entrypoint")
    wrong = copy.deepcopy(job)
    wrong["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert list(validator.iter_errors(typo)) and list(validator.iter_errors(wrong))


def _pod_env(container: dict) -> dict[str, str]:
    """A container's environment as its pod would have it: plain values, and a marker for each Secret key."""
    env = {"PATH": os.environ["PATH"]}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"<secret {ref['name']}/{ref['key']}>"
    return env


def _through_the_shells(entrypoint: str, head_env: dict[str, str]) -> list[str]:
    """The driver's argv after KubeRay's submitter shell and the job's shell on the head pod."""
    capture = 'for a in "$@"; do printf "%s\\0" "$a"; done'
    submitter = (f'ray() {{ while [ "$1" != "--" ]; do shift; done; shift; {capture}; }}; '
                 f"ray job submit --address http://head:8265 --no-wait -- {entrypoint} ;")
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", "RAY_DASHBOARD_ADDRESS": "head:8265",
           "RAY_JOB_SUBMISSION_ID": "memsearch-greedy-gan-x"}  # what KubeRay gives the submitter
    after_submitter = subprocess.run(["bash", "-ce", submitter], env=env, capture_output=True, check=True).stdout
    job_entrypoint = list2cmdline(after_submitter.decode().split("\0")[:-1])  # ray job submit's join
    driver = subprocess.run(["sh", "-c", f"python() {{ {capture}; }}; {job_entrypoint}"], env=head_env,
                            capture_output=True, check=True)
    return driver.stdout.decode().split("\0")[:-1]


def test_the_entrypoint_reaches_the_driver_as_written():
    from search.run import build_parser

    job = _rayjob()
    entrypoint = job["spec"]["entrypoint"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_env = _pod_env(head)
    assert "$(" not in entrypoint, "$(NAME) is Kubernetes' syntax; where it cannot resolve it, bash runs it"
    names = re.findall(r"\$\{(\w+)\}", entrypoint)
    assert names and len(names) == entrypoint.count("$"), "every variable is written ${NAME}"
    assert all(n in head_env for n in names), f"the head pod (the driver's) defines {names}"
    argv = _through_the_shells(entrypoint, head_env)
    assert argv[:2] == ["-m", "search.run"], argv
    options = build_parser().parse_args(argv[2:])
    assert options.runs_dir == f"s3://{head_env['MEMSEARCH_BUCKET']}/memsearch"
    assert options.storage == f"postgresql://memsearch@{head_env['MEMSEARCH_DB_HOST']}:5432/memsearch"
    assert options.address is None, "inside a Ray job the driver finds its cluster through RAY_ADDRESS"
    # The database password: from a Secret, in the environment of the pod that runs the driver (the head: no
    # entrypoint resources move it elsewhere), read there by libpq; never in the entrypoint.
    assert head_env.get("PGPASSWORD", "").startswith("<secret "), "PGPASSWORD comes from a Secret on the head pod"
    assert not {"entrypointNumCpus", "entrypointNumGpus", "entrypointResources"} & set(job["spec"])
    assert "PASSWORD" not in entrypoint.upper()


def test_the_image_runs_the_projects_ray():
    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [r for r in requirements if re.match(r"ray\b", r)]
    assert len(pinned) == 1 and "==" in pinned[0], f"the project pins one Ray version: {pinned}"
    version = pinned[0].split("==")[1].strip()
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == version
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    images = {c["image"] for pod in pods for c in pod["template"]["spec"]["containers"]}
    assert images == {f"my-registry/memsearch:ray{version}"}, images
    base = re.search(r"^FROM rayproject/ray:([\d.]+)-", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert base and base.group(1) == version
