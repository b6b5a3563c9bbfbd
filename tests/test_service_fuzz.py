"""Schemathesis against the gateway's own OpenAPI schema: no 5xx, every response matches the schema."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from service_stack import serving, write_bundle

from service.auth import hash_key

EXAMPLES_PER_OPERATION = 40
KEY = "fuzzer-api-key"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with serving(tmp, [write_bundle(tmp / "bundles", "tiny")], VGS_RATE_LIMIT_PER_MINUTE="0",
                 VGS_MAX_CONCURRENT_JOBS="0", VGS_AUTH="true", VGS_API_KEYS=f"fuzzer:{hash_key(KEY)}") as s:
        yield s


def test_gateway_conforms_to_its_schema(stack):
    api = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    counted = {}
    failures = []
    def fuzz(operation, label):
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            counted[label] += 1
            # Every default check but positive_data_acceptance: the schema cannot say which class labels a
            # model has or whether an upload decodes, so some schema-valid requests are rightly refused (422).
            case.call_and_validate(base_url=stack.url, timeout=30, excluded_checks=[positive_data_acceptance],
                                   headers={"Authorization": f"Bearer {KEY}"})

        run()

    for result in api.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        counted[label] = 0
        try:
            fuzz(operation, label)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{label}: {exc}")
    print(f"schemathesis: {sum(counted.values())} cases over {len(counted)} operations: {counted}")
    assert not failures, "\n\n".join(failures)
    assert len(counted) >= 9 and sum(counted.values()) >= 100


def test_the_schema_documents_the_error_shape(stack):
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    generate = spec["paths"]["/v1/generate"]["post"]["responses"]
    assert {"202", "401", "409", "413", "422", "429", "503"} <= set(generate)
