"""Checkpointing tests: Keras on JAX, simulated CPU devices, a clean distribution.

tests/conftest.py already asks for 8 CPU devices before JAX starts; the
distributed tests here use the first 4 of them for a (2, 2) mesh.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_global_distribution():
    """`set_distribution` is global: every test starts and ends without one."""
    keras.distribution.set_distribution(None)
    keras.utils.set_random_seed(0)
    yield
    keras.distribution.set_distribution(None)
