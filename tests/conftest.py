"""Shared fixtures: an S3/Glue endpoint served by moto on 127.0.0.1 (never AWS), Beam's local
job service for PortableRunner submissions, free loopback ports."""

import os
import socket
import subprocess
import sys
import time

import pytest
from app_helpers import free_port

# Dummy credentials and no instance-metadata lookups: no test may reach AWS.
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ[_key] = _value


@pytest.fixture(scope="session")
def moto_endpoint():
    """``http://127.0.0.1:PORT`` of a moto server (S3 and Glue) for this test session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint, request):
    """A fresh, empty S3 bucket on the moto server; returns its name."""
    import boto3

    name = "test-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def job_service():
    """``localhost:PORT`` of Beam's local job service (what PortableRunner submits to)."""
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert service.poll() is None, "the local job service exited"
                assert time.monotonic() < deadline, "the local job service did not start"
                time.sleep(0.2)
        yield f"localhost:{port}"
    finally:
        service.terminate()
        service.wait(timeout=30)
