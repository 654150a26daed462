"""Schema-driven fuzzing (schemathesis) of a live `blipcap serve` on 127.0.0.1, from the app's own
OpenAPI document: every generated request gets a status the document lists, never a 500, and the
server stays healthy afterwards. Bounded: a fixed number of examples per operation."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
schemathesis = pytest.importorskip("schemathesis", reason="the test extra is not installed")
import httpx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import status_code_conformance  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.server.test_server_e2e import launch  # noqa: E402

EXAMPLES = 40  # per operation


@pytest.fixture(scope="module")
def served(tiny_fixture):
    with launch(tiny_fixture, "--log-level", "warning", "--max-queue", "8") as (base, _):
        yield base


def test_every_generated_request_gets_a_documented_status_and_never_a_500(served):
    # hypothesis driven by hand over each operation (schemathesis's pytest plugin does not load under
    # this pytest); the same generation and checks
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/caption", "/healthz", "/readyz", "/metrics"}
    statuses = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(timeout=60)
            statuses.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

        check()
    assert len(statuses) >= 4 * len(operations)  # it did send requests, and not only good ones
    assert any(400 <= s < 500 for s in statuses) and any(s == 200 for s in statuses), sorted(set(statuses))


def test_the_server_is_healthy_after_the_fuzzing(served):
    assert httpx.get(f"{served}/healthz", timeout=10).json() == {"status": "ok"}
    assert httpx.get(f"{served}/readyz", timeout=10).status_code == 200
