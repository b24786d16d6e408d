"""Property-based fuzzing (hypothesis) of image decoding and of gRPC messages sent to a live server.

CI runs a bounded number of examples; ``python -m benchmarks.reliability.fuzz`` runs the same harnesses for longer.
"""

from __future__ import annotations

from collections import Counter

import grpc
from hypothesis import HealthCheck, given, settings

from benchmarks.fuzzing import Call, bombs, check_decode, check_grpc_call, decode_inputs, grpc_calls, seed_images
from tests.conftest import Server

DECODE_EXAMPLES = 400
GRPC_EXAMPLES = 150
FUZZ_SETTINGS = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}


def test_every_seed_and_bomb_decodes_or_fails_as_documented() -> None:
    outcomes = [check_decode(data) for data in (*seed_images(), *bombs())]
    assert outcomes.count("ok") >= 25  # the seeds are valid images (GIF is refused)
    assert outcomes[-3:] == ["payload_too_large", "ok", "payload_too_large"]  # over, inside, huge


def test_decoding_hostile_bytes() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=DECODE_EXAMPLES, **FUZZ_SETTINGS)
    @given(decode_inputs())
    def decode(data: bytes) -> None:
        seen[check_decode(data)] += 1

    decode()
    assert sum(seen.values()) >= DECODE_EXAMPLES
    assert {"ok", "invalid_input", "payload_too_large"} <= set(seen), seen


def test_grpc_messages(server: Server) -> None:
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(server.grpc_target) as channel:

        @settings(max_examples=GRPC_EXAMPLES, **FUZZ_SETTINGS)
        @given(grpc_calls())
        def call(request: Call) -> None:
            seen[check_grpc_call(channel, request)] += 1

        call()
    assert sum(seen.values()) >= GRPC_EXAMPLES
    assert {"OK", "INVALID_ARGUMENT"} <= set(seen), seen
