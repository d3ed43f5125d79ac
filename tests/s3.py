"""A real S3-compatible server for tests: ``moto`` in server mode on loopback, authentication on.

The fixture ``s3_server`` (session scope) starts ``python -m moto.server`` on a free loopback
port with ``INITIAL_NO_AUTH_ACTION_COUNT=3``: the first three requests (creating an IAM user,
its policy and its access key) go unchecked, and every later one must be signed by a key the
server knows, as on S3. It creates the bucket ``memsearch-test`` with that key and yields an
:class:`S3Server`; at the end of the session it stops exactly the process it started.

moto is a test dependency (``pip install -e '.[test]'``); without it the tests are skipped,
unless ``MEMSEARCH_REQUIRE_S3`` is set (CI sets it), which makes that a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.postgres import free_port

BUCKET = "memsearch-test"
REGION = "us-east-1"


@dataclass
class S3Server:
    port: int
    key: str
    secret: str
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def uri(self, prefix: str, bucket: str | None = None) -> str:
        return f"s3://{bucket or self.bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http&region={REGION}"

    def credentials(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def env(self) -> dict[str, str]:
        """This process's environment with the server's credentials: for the commands a test runs."""
        return {**os.environ, **self.credentials()}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.endpoint}", aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name=REGION)

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@contextlib.contextmanager
def moto_server(*, auth: bool = True, log: Path | None = None):
    """moto's S3 server on a free loopback port with the bucket made: yields an :class:`S3Server` and stops
    exactly that process. ``auth``: every request after the set-up must be signed by the key it yields.
    ``log``: the server's request log (one line per request answered) goes there."""
    import boto3

    port = free_port()
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "3"} if auth else {})}
    sink = open(log, "w") if log else subprocess.DEVNULL
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.2)
        admin = boto3.session.Session(aws_access_key_id="setup", aws_secret_access_key="setup", region_name=REGION)
        iam = admin.client("iam", endpoint_url=f"http://127.0.0.1:{port}")
        iam.create_user(UserName="memsearch")
        iam.put_user_policy(UserName="memsearch", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="memsearch")["AccessKey"]
        s3 = S3Server(port, key["AccessKeyId"], key["SecretAccessKey"])
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if log:
            sink.close()


@pytest.fixture(scope="session")
def s3_server():
    import importlib.util

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        if os.environ.get("MEMSEARCH_REQUIRE_S3", "").strip() not in ("", "0"):
            pytest.fail("moto is not installed (MEMSEARCH_REQUIRE_S3 is set, so this is an error, not a skip)")
        pytest.skip("moto is not installed: pip install -e '.[test]'")
    with moto_server() as s3:
        yield s3
