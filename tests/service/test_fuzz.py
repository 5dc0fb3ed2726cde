"""The HTTP contract, fuzzed with schemathesis against the service's own OpenAPI document: nothing a
client sends gets a 5xx, and every answer conforms to the document (status, content type, body).

A bounded, deterministic run of scripts/fuzz.py per backend and admin token mode over the real
setup (tests/service/service_setup.py), in-process; `python -m scripts.fuzz` is the long run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.fuzz import TOKEN_HEADERS, Tally, fuzz_run
from tests.service.databases import BACKENDS
from tests.service.service_setup import ServiceSetup, service_setup  # noqa: F401 - service_setup is a fixture

# Hypothesis examples per operation and run; the coverage phase and the targeted requests come on top
# (about 200 requests per backend and token mode in all).
EXAMPLES_PER_OPERATION = 3
ADMIN_PREFIX = "/admin/"


@pytest.mark.parametrize("token", list(TOKEN_HEADERS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_request_gets_a_5xx_or_an_answer_outside_the_schema(service_setup: ServiceSetup, backend: str,
                                                                 token: str, tmp_path: Path):
    tally = Tally()
    operations = fuzz_run(service_setup, backend, token, EXAMPLES_PER_OPERATION, tmp_path, tally)
    summary = tally.summary()
    assert summary["engine_errors"] == []
    assert summary["server_errors"] == 0 and summary["failures"] == 0, \
        json.dumps(summary["failure_details"], indent=1)
    statuses = summary["statuses_by_route"]
    assert set(statuses) == set(operations)
    assert all("200" in statuses[operation] for operation in ("POST /search", "POST /regions", "GET /saliency"))
    admin_successes = [status for operation, answered in statuses.items() if ADMIN_PREFIX in operation
                       for status in answered if status.startswith("2")]
    assert bool(admin_successes) == (token == "valid"), statuses
