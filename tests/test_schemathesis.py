"""schemathesis against the OpenAPI document: every generated request, signed over the exact
bytes sent, gets no server error and a reply the document describes."""

from __future__ import annotations

import json
import uuid

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from flask_callbot.openapi import build_openapi
from flask_callbot.testing import sign_headers

from support import NOW, SECRET, UUID, stored_count

OPERATIONS = ["taskCallback", "orderCallback", "callCallback"]


@pytest.mark.parametrize("operation_id", OPERATIONS)
def test_generated_requests_get_no_server_error(app: Flask, operation_id: str) -> None:
    schema = schemathesis.openapi.from_dict(build_openapi(app))
    operation = schema.find_operation_by_id(operation_id)
    client = app.test_client()
    statuses: set[int] = set()

    @settings(
        max_examples=50,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        # The hook: serialise the generated body once, sign those bytes as the vendor would
        # (the app's credentials, its clock, the digest the generated `algorithm` asks for).
        body = json.dumps(case.body).encode()
        algorithm = (case.headers or {}).get("algorithm", "MD5").upper()
        headers = sign_headers(
            body,
            secret_key=SECRET,
            uuid=UUID,
            algorithm=algorithm,
            request_id=uuid.uuid4().hex,
            create_ts=NOW,
            algorithm_header="algorithm" in (case.headers or {}),
        )
        headers["Content-Type"] = "application/json"
        response = client.post(case.formatted_path, data=body, headers=headers)
        statuses.add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    check()
    assert statuses <= {200, 400}
    assert 200 in statuses  # the document's valid bodies do reach the store
    assert stored_count(app) > 0
