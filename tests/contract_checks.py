"""The schemathesis checks both contract tests run: the app in process against fixed models
(tests/unit/test_openapi.py) and the live stack through the gateway (tests/integration/test_contract.py)."""

from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
