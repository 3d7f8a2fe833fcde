"""The launcher-overhead comparison: Keras `fit` against a hand-written `jax.jit` step.

The raw step trains the same MLP on the same batches with Adam written in
jax.numpy (optax is not a dependency of podfit), with the same learning rate,
betas and epsilon as keras.optimizers.Adam, and donates its state as Keras'
JAX trainer does. Both loops feed host (numpy) batches, one per step.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import keras
import numpy as np

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-7


def _forward(params, x):
    for i, (w, b) in enumerate(params):
        x = x @ w + b
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def _loss(params, x, y):
    return jnp.mean(jnp.square(_forward(params, x) - y))


def make_raw_step(learning_rate: float):
    """Returns a jitted (params, m, v, t, x, y) -> (params, m, v, t, loss) Adam step."""

    def step(params, m, v, t, x, y):
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        t = t + 1
        m = jax.tree.map(lambda m_, g: _BETA1 * m_ + (1 - _BETA1) * g, m, grads)
        v = jax.tree.map(lambda v_, g: _BETA2 * v_ + (1 - _BETA2) * g * g, v, grads)
        tf = t.astype(jnp.float32)
        lr = learning_rate * jnp.sqrt(1 - _BETA2**tf) / (1 - _BETA1**tf)
        params = jax.tree.map(lambda p, m_, v_: p - lr * m_ / (jnp.sqrt(v_) + _EPS), params, m, v)
        return params, m, v, t, loss

    return jax.jit(step, donate_argnums=(0, 1, 2, 3))


class RawLoop:
    """The MLP of a Keras model, trained by a plain jitted loop."""

    def __init__(self, model: keras.Model, learning_rate: float):
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        self.params = [(jnp.array(d.kernel.value), jnp.array(d.bias.value)) for d in dense]
        self.m = jax.tree.map(jnp.zeros_like, self.params)
        self.v = jax.tree.map(jnp.zeros_like, self.params)
        self.t = jnp.zeros((), jnp.int32)
        self.step = make_raw_step(learning_rate)

    def run(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
        """Trains one pass over (x, y); returns the seconds, computation finished."""
        start = time.perf_counter()
        loss = None
        for i in range(0, len(x), batch_size):
            self.params, self.m, self.v, self.t, loss = self.step(
                self.params, self.m, self.v, self.t, x[i : i + batch_size], y[i : i + batch_size]
            )
        jax.block_until_ready((self.params, loss))
        return time.perf_counter() - start


def keras_fit_seconds(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """Seconds for one plain `fit` epoch (no callbacks of ours), state synced at the end."""
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    jax.block_until_ready([v.value for v in model.trainable_variables])
    return time.perf_counter() - start
