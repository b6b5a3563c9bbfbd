"""Schemathesis against the gateway's own OpenAPI schema: no 5xx, every response matches the schema.

Two searches: a fixed one (the same cases every run) and one whose seed changes with every run, so that each
run also looks where earlier ones did not; a failure names its seed, and FUZZ_SEED=<seed> replays it.
"""

from __future__ import annotations

import os
import random

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from schemathesis.specs.openapi.checks import positive_data_acceptance
from service_stack import serving, write_bundle

from service.auth import hash_key

KEY = "fuzzer-api-key"
RUN_SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
SEARCHES = {"fixed": (None, 40), "this-run": (RUN_SEED, 150)}  # (seed, examples per operation)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with serving(tmp, [write_bundle(tmp / "bundles", "tiny")], VGS_RATE_LIMIT_PER_MINUTE="0",
                 VGS_MAX_CONCURRENT_JOBS="0", VGS_AUTH="true", VGS_API_KEYS=f"fuzzer:{hash_key(KEY)}") as s:
        yield s


@pytest.mark.parametrize("search", SEARCHES)
def test_gateway_conforms_to_its_schema(stack, search):
    seed, examples = SEARCHES[search]
    api = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    counted = {}
    failures = []
    def fuzz(operation, label):
        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, derandomize=seed is None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            counted[label] += 1
            # Every default check but positive_data_acceptance: the schema cannot say which class labels a
            # model has or whether an upload decodes, so some schema-valid requests are rightly refused (422).
            case.call_and_validate(base_url=stack.url, timeout=30, excluded_checks=[positive_data_acceptance],
                                   headers={"Authorization": f"Bearer {KEY}"})

        (run if seed is None else hypothesis_seed(seed)(run))()

    for result in api.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        counted[label] = 0
        try:
            fuzz(operation, label)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{label}: {exc}")
    replay = "" if seed is None else f" (seed {seed}: FUZZ_SEED={seed} replays this search)"
    print(f"schemathesis, {search} search{replay}: {sum(counted.values())} cases over {len(counted)} operations: "
          f"{counted}")
    assert not failures, f"{search} search{replay}:\n" + "\n\n".join(failures)
    assert len(counted) >= 9 and sum(counted.values()) >= 100


def test_the_schema_documents_the_error_shape(stack):
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    generate = spec["paths"]["/v1/generate"]["post"]["responses"]
    assert {"202", "401", "409", "413", "422", "429", "503"} <= set(generate)
