"""An S3-compatible server for the media tests: moto in server mode, started once per session on
a free loopback port (a conftest plugin, so every suite that needs S3 shares it)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

ACCESS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """An S3-compatible server for the whole session, on a free port of the loopback."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def admin_client(endpoint: str) -> Any:
    """The tests' own client of the S3 server, to make buckets and look behind the store."""
    return get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, **ACCESS
    )


async def new_bucket(admin: Any) -> str:
    name = f"agora-media-{secrets.token_hex(4)}"
    await admin.create_bucket(Bucket=name)
    return name
