"""Test-wide set-up: Keras on JAX with 8 simulated CPU devices in this process.

Multi-process tests start their own launcher processes with their own flags.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
