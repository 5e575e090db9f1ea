"""Fixtures of these tests: one torch thread (tests.unit.threads)."""

from tests.unit.threads import one_torch_thread  # noqa: F401  (an autouse fixture)
