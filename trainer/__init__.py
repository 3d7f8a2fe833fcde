"""Mesh + layouts, grain data, model registry and the Keras fit loop.

podfit runs Keras on JAX only: importing the trainer selects the JAX backend
unless another one was asked for, which is refused.
"""

import os

if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
    raise ImportError(
        f"podfit needs KERAS_BACKEND=jax. Received: KERAS_BACKEND={os.environ['KERAS_BACKEND']}"
    )
