"""Schema-driven fuzzing of the whole REST API against a real node process.

schemathesis reads ``/api/openapi.json`` and sends what the schema allows and what it does not
(wrong types, missing fields, huge and odd strings, NUL characters, other methods), then chains
calls statefully (create a post, comment on it...). Every answer must be documented for that
endpoint, carry the declared content type and match the declared schema, and none may be a
server error. Longer runs found the 500s now covered by their own tests (ids past a bigint, NUL
in text, a type error before a syntax error); this one (fixed seed, 60 examples per endpoint,
about 20 s) is the net that stays in the suite: with the NUL check removed it fails.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import JWT_SECRET
from tests.support.api import PASSWORD
from tests.support.node import NodeProcess
from tests.support.services import ServiceSet

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


@pytest.mark.timeout(240)  # about 70 s here with one worker; room for a loaded machine
async def test_no_input_breaks_the_contract_or_the_node(
    tmp_path: Path, services: ServiceSet, database_url: str, redis_prefix: str
) -> None:
    node = NodeProcess(
        {
            "AGORA_JWT_SECRET": JWT_SECRET,
            "AGORA_DATABASE_URL": database_url,
            "AGORA_REDIS_URL": services.redis_url,
            "AGORA_REDIS_PREFIX": f"{redis_prefix}fuzz:",
        },
        tmp_path,
    )
    node.start()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"username": "fuzzer", "email": "fuzzer@example.test", "password": PASSWORD}
            async with http.post(f"{node.url}/api/v1/auth/register", json=body) as resp:
                assert resp.status == 201
                token = (await resp.json())["access_token"]
        schemathesis = Path(sys.executable).with_name("schemathesis")
        proc = await asyncio.create_subprocess_exec(
            str(schemathesis),
            "run",
            f"{node.url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            CHECKS,
            "--max-examples",
            "60",
            "--seed",
            "1",
            # One worker: with two, hypothesis (inside schemathesis) describes its filter lambdas
            # with ast.parse from two threads at once, which CPython 3.11.7 can fail with
            # "SystemError: AST constructor recursion depth mismatch" (a fuzzer error, not a
            # finding; seen once in a clean-clone run).
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
        report = out.decode(errors="replace")
        assert proc.returncode == 0, report[-6000:]
        assert "generated" in report  # it ran cases, not nothing
        assert node.proc is not None and node.proc.poll() is None  # still up
    finally:
        assert node.stop() == 0
    assert "unhandled error" not in node.log, node.log[-4000:]
