"""Shared fixtures of the model_diff unit tests."""

from tests.unit.threads import one_torch_thread  # noqa: F401  (an autouse fixture)
