"""schemathesis against the live server's OpenAPI schema: every operation, valid and invalid requests, no 5xx."""

from __future__ import annotations

from benchmarks.fuzzing import schema_fuzz
from tests.conftest import Server

EXAMPLES_PER_OPERATION = 25


def test_no_request_from_the_schema_gets_a_server_error(server: Server) -> None:
    seen = schema_fuzz(server.url, EXAMPLES_PER_OPERATION)
    operations = {key.rsplit(" ", 1)[0] for key in seen}
    assert {"POST /v1/extract", "POST /v1/extract/batch", "POST /v1/match", "GET /v1/models/{name}"} <= operations
    assert sum(seen.values()) >= 5 * EXAMPLES_PER_OPERATION
    assert any(key.endswith(" 200") for key in seen) and any(key.endswith(" 422") for key in seen)
