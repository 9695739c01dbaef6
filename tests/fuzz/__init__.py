"""Fuzz tests: hypothesis drives register decoding, Modbus writes, the site configuration
and command payloads with arbitrary input (docs/security.md).

Every test here takes the ``vpp-fuzz`` settings profile: 300 examples, each test within
about ten seconds in the default run. ``VPP_FUZZ_EXAMPLES=20000 pytest tests/fuzz`` runs
them longer. A failure prints its minimal example (and ``@reproduce_failure`` blob); keep
it as a plain regression test beside the fuzzer that found it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("VPP_FUZZ_EXAMPLES", "300"))

settings.register_profile(
    "vpp-fuzz", max_examples=EXAMPLES, deadline=None, print_blob=True,
    # generated documents and payloads are large by design; a slow example is not a bug
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example])
FUZZ = settings.get_profile("vpp-fuzz")
