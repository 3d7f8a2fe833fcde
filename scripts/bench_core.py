"""Model, data, the timing wrapper and the directory watcher used by scripts/bench.py.

Every variant runs `model.fit` on the same compiled model and the same batches;
only the checkpoint callback changes. A `TimedCallback` wraps the variant's
callback, delegates every hook to it and records how long the training thread
spent inside each call, and whether that call started a save.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

# Names an Orbax-style writer uses while a step is not committed yet.
_UNCOMMITTED_MARKERS = ("tmp", ".partial", "incomplete")


@dataclass(frozen=True)
class ModelSpec:
    """An MLP of `depth` square Dense layers of `width` units, trained with Adam."""

    width: int
    depth: int
    batch_size: int

    @property
    def params(self) -> int:
        return self.depth * (self.width * self.width + self.width)

    @property
    def state_bytes(self) -> int:
        """fp32 weights plus Adam's two moments."""
        return 3 * 4 * self.params


def model_spec(param_millions: float, depth: int, batch_size: int) -> ModelSpec:
    """The MLP whose parameter count is closest to `param_millions` * 1e6."""
    if param_millions <= 0 or depth < 1:
        raise ValueError(
            f"param_millions must be > 0 and depth >= 1. "
            f"Received: param_millions={param_millions}, depth={depth}"
        )
    width = max(8, round(math.sqrt(param_millions * 1e6 / depth)))
    return ModelSpec(width=width, depth=depth, batch_size=batch_size)


def build_model(spec: ModelSpec, seed: int = 0) -> keras.Model:
    """Builds and compiles the MLP, with the optimizer's variables created."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((spec.width,))]
    for i in range(spec.depth):
        last = i == spec.depth - 1
        # Fixed names: a second model built in this process (another mesh layout)
        # must have the same variable paths as the one whose checkpoint it restores.
        layers.append(
            keras.layers.Dense(spec.width, activation=None if last else "relu", name=f"dense_{i}")
        )
    model = keras.Sequential(layers, name="bench_mlp")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4, name="adam"), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def make_data(spec: ModelSpec, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`steps` batches of inputs and regression targets, fp32, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    n = steps * spec.batch_size
    x = rng.standard_normal((n, spec.width), dtype=np.float32)
    y = rng.standard_normal((n, spec.width), dtype=np.float32)
    return x, y


def block_until_ready(model: keras.Model) -> None:
    """Waits for every variable of the model (and its optimizer) to be computed."""
    import jax

    values = [v.value for v in model.variables]
    if model.optimizer is not None:
        values += [v.value for v in model.optimizer.variables]
    jax.block_until_ready(values)


# --------------------------------------------------------------------------- timing


@dataclass
class Call:
    hook: str
    batch: int
    start: float
    end: float
    saved: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


class TimedCallback(keras.callbacks.Callback):
    """Delegates every hook to `inner` (or to nothing) and times the calls.

    `saves_started` returns a value that changes whenever the wrapped callback
    begins a save (a count, or the last step saved); a call during which it
    changed is a call "in which a save happened".
    Without that probe, the calls on every save_freq-th batch count as saves.
    The wrapper overrides `on_train_batch_end`, so Keras dispatches batch-end
    hooks synchronously for every variant, the no-checkpoint one included:
    all variants pay the same per-step log conversion.
    """

    def __init__(
        self,
        inner: keras.callbacks.Callback | None,
        saves_started: Callable[[], object] | None,
        save_freq: int,
    ):
        super().__init__()
        self.inner = inner
        self._saves_started = saves_started
        self._save_freq = save_freq
        self.calls: list[Call] = []

    def set_model(self, model):
        super().set_model(model)
        if self.inner is not None:
            self.inner.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        if self.inner is not None:
            self.inner.set_params(params)

    def _timed(self, hook: str, batch: int, *args) -> None:
        before = self._saves_started() if self._saves_started else 0
        start = time.perf_counter()
        if self.inner is not None:
            getattr(self.inner, hook)(*args)
        end = time.perf_counter()
        if self.inner is None:
            saved = False
        elif self._saves_started is not None:
            saved = self._saves_started() != before
        else:  # By the schedule: every save_freq-th batch of the epoch.
            saved = hook == "on_train_batch_end" and (batch + 1) % self._save_freq == 0
        self.calls.append(Call(hook, batch, start, end, saved))

    def _plain(self, hook: str, *args) -> None:
        if self.inner is not None:
            getattr(self.inner, hook)(*args)

    def on_train_begin(self, logs=None):
        self._plain("on_train_begin", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._plain("on_epoch_begin", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._plain("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._timed("on_train_batch_end", batch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._timed("on_epoch_end", -1, epoch, logs)

    def on_train_end(self, logs=None):
        self._timed("on_train_end", -1, logs)


class DirWatcher:
    """Polls a checkpoint directory and records when each committed entry appears.

    Orbax writes a step under a temporary name and renames it when the step
    is complete, so the first time a name without a temporary marker is seen
    is (within one poll interval) the time the step became durable.
    """

    def __init__(self, path: str, interval_s: float = 0.005):
        self.path = path
        self.interval_s = interval_s
        self.first_seen: dict[str, float] = {}
        self.uncommitted_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-dirwatch", daemon=True)

    @staticmethod
    def committed(name: str) -> bool:
        lower = name.lower()
        return (
            not name.startswith(".")
            and any(c.isdigit() for c in name)
            and not any(m in lower for m in _UNCOMMITTED_MARKERS)
        )

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except FileNotFoundError:
            return []

    def poll(self) -> bool:
        """Records new names; returns True when a temporary entry is present."""
        now = time.perf_counter()
        busy = False
        for name in self._names():
            if self.committed(name):
                self.first_seen.setdefault(name, now)
            elif any(m in name.lower() for m in _UNCOMMITTED_MARKERS):
                busy = True
        return busy

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.poll():
                self.uncommitted_seen += 1
            time.sleep(self.interval_s)

    def start(self) -> DirWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def settle(self, quiet_s: float = 0.3, timeout_s: float = 300.0) -> None:
        """Waits until no temporary entry is left and nothing new appeared for quiet_s."""
        deadline = time.perf_counter() + timeout_s
        last_count, last_change = -1, time.perf_counter()
        while time.perf_counter() < deadline:
            busy = self.poll()
            count = len(self.first_seen)
            if busy or count != last_count:
                last_count, last_change = count, time.perf_counter()
            elif time.perf_counter() - last_change >= quiet_s:
                return
            time.sleep(self.interval_s)
        raise TimeoutError(f"{self.path} still has uncommitted entries after {timeout_s}s")


def tree_bytes(path: str) -> int:
    """Bytes in the files under `path` (or of the file `path`)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total
