"""Where the Ray cluster is: ``--address``, else ``RAY_ADDRESS`` (a Ray job's driver has it), else the Ray that
``ray start`` left on this machine (``search.runner.cluster``), else a local Ray; and
whether it answers, asked before anything starts (Ray itself waits minutes on a cluster that is not there)."""

from __future__ import annotations

import os
import socket
from typing import Any

from search.errors import StudyError


def check_reachable(address: str, named_by: str = "--address", timeout: float = 5.0) -> None:
    """Fail fast on an unreachable cluster: Ray itself waits minutes before giving up."""
    if address in ("auto", "local"):  # Ray finds the cluster itself; a Ray of the search's own
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"{named_by} {address!r} is not host:port (for example 10.0.0.5:6379, as `ray start --head` "
                         "prints).")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise StudyError(f"cannot reach the Ray cluster at {named_by} {address} ({err.strerror or err}); "
                         "check the address printed by `ray start --head` and that the cluster is up.") from None


def cluster_address(options: Any) -> tuple[str | None, str]:
    """The Ray cluster to connect to, and where it was named: ``--address``, else ``RAY_ADDRESS`` as ``ray.init()``
    reads it (every Ray job's driver has it: ``ray job submit``, KubeRay's RayJob), else (None, ""): the Ray that
    ``ray start`` left on this machine, or a local Ray of the search's own (``--address local``: always that)."""
    if options.address:
        return options.address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, ""
