"""Per save: how long training is blocked, how much fit time is lost, when the step is durable.

Each variant in VARIANTS is a callback on the same compiled model and batches, saving at the
same steps; a round runs one `fit` per variant, in an order that rotates between rounds.
`none` is the baseline; `orbax_manager`, what users write by hand. Per save (medians):
  blocked  seconds the training thread spends in the callback's hooks at a save (the end
           of the save's batch and the begin of the next)
  lost     (fit seconds - the same round's `none` fit seconds) / saves; every variant
           waits for its last write in `on_train_end`, inside `fit`
  durable  from the start of the save's hook until its step directory is committed
           (Orbax renames `<step>.orbax-checkpoint-tmp-*` to `<step>`), seen by polling
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import threading
import time

import jax
import keras
from orbax import checkpoint as ocp

import checkpointing


class ManagerCheckpoint(keras.callbacks.Callback):
    """What users write by hand: an async Orbax CheckpointManager save every N batches."""

    def __init__(self, directory: str, save_freq: int):
        super().__init__()
        self.save_freq, self.batches = save_freq, 0
        options = ocp.CheckpointManagerOptions(max_to_keep=2)  # Async by default.
        self.manager = ocp.CheckpointManager(directory, options=options)

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches % self.save_freq == 0:
            state = self.model.get_state_tree()
            self.manager.save(self.batches, args=ocp.args.StandardSave(state))

    def on_train_end(self, logs=None):
        self.manager.wait_until_finished()
        self.manager.close()


KerasOrbax = keras.callbacks.OrbaxCheckpoint
VARIANTS = {  # name: (directory, save_freq) -> callback
    "none": None,
    "podfit": lambda d, n: checkpointing.OrbaxCheckpoint(d, save_freq=n, max_to_keep=2),
    "keras_bg": lambda d, n: KerasOrbax(d, save_freq=n, max_to_keep=2),
    "keras_sync": lambda d, n: KerasOrbax(d, save_freq=n, max_to_keep=2, save_on_background=False),
    "orbax_manager": ManagerCheckpoint,
}


# In every fit, so that Keras dispatches every variant's steps alike (the per-step question
# measures dispatch); async dispatch can stall XLA's CPU all-reduce over devices of a process.
SYNC = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: None)


def time_batch_hooks(callback: keras.callbacks.Callback) -> dict:
    """Wraps `callback`'s batch hooks in place; returns {(hook, batch): (start, end, on the
    training thread)}, filled as `fit` runs. The wrappers keep Keras' `_is_default` mark
    (and the callback its `async_safe`), so Keras dispatches them as it did the hooks."""
    calls = {}
    for hook in ("on_train_batch_begin", "on_train_batch_end", "on_epoch_end"):
        original = getattr(callback, hook)

        def timed(batch, logs=None, hook=hook, original=original):
            start = time.perf_counter()
            original(batch, logs)
            main = threading.current_thread() is threading.main_thread()
            calls[(hook, batch)] = (start, time.perf_counter(), main)

        timed._is_default = getattr(original, "_is_default", False)
        setattr(callback, hook, timed)
    return calls


def _watch(directory: str, seen: dict, stop: threading.Event) -> None:
    """Until `stop`, every 5 ms: notes when each committed step (a name of digits) appears."""
    while True:
        now, last = time.perf_counter(), stop.is_set()
        for name in os.listdir(directory):
            if name.isdigit():
                seen.setdefault(int(name), now)
        if last:
            return
        time.sleep(0.005)


def run_fit(model, dist, x, y, batch_size: int, make, save_every: int, directory: str) -> dict:
    """One epoch over (x, y) with the callback `make(directory, save_every)` (or none)."""
    model.optimizer.iterations.assign(0)  # podfit saves at global steps, Keras counts batches.
    callback = make(directory, save_every) if make else None
    seen, stop = {}, threading.Event()
    if callback:
        calls = time_batch_hooks(callback)
        os.makedirs(directory, exist_ok=True)  # Keras' callback makes it when built.
        watcher = threading.Thread(target=_watch, args=(directory, seen, stop), daemon=True)
        watcher.start()
    start = time.perf_counter()
    with dist.scope():
        callbacks = [SYNC, callback] if callback else [SYNC]
        model.fit(x, y, batch_size=batch_size, shuffle=False, verbose=0, callbacks=callbacks)
    jax.block_until_ready([v.value for v in model.variables])
    fit = {"fit_s": time.perf_counter() - start}
    if callback:
        stop.set()
        watcher.join()
        last, blocked, durable = len(x) // batch_size, [], []
        steps = range(save_every, last + 1, save_every)
        for step in steps:  # The save of `step` runs in the hooks after batch `step - 1`:
            end = calls[("on_train_batch_end", step - 1)]  # and the next batch's start, or
            after = ("on_epoch_end", 0) if step == last else ("on_train_batch_begin", step)
            begin = calls.get(after, (0, 0, False))  # for the last batch the epoch's end.
            blocked.append(sum(b - a for a, b, main in (end, begin) if main))
            durable.append(seen[step] - end[0])
        fit.update(saves=len(steps), blocked_s=blocked, durable_s=durable)
        fit["last_durable_after_fit_s"] = max(seen.values()) - start - fit["fit_s"]
    return fit


def warm_up(model, dist, data, batch_size, scratch, log, save_every) -> int:
    """Runs every variant once (compiles, first saves); returns `save_every`, or if 0 the
    steps that put saves 3 times the slowest variant's write (median of 4) apart."""
    x, y = data(8)
    step_s = min(run_fit(model, dist, x, y, batch_size, None, 0, "")["fit_s"] for _ in range(2)) / 8
    write_s = 0.0
    for name, make in list(VARIANTS.items())[1:]:
        d = os.path.join(scratch, f"warm_up_{name}")
        durable = run_fit(model, dist, x, y, batch_size, make, 2, d)["durable_s"]
        write_s = max(write_s, statistics.median(durable))
        shutil.rmtree(d)
    log(f"warm-up: step {step_s * 1e3:.1f} ms, slowest write {write_s * 1e3:.0f} ms")
    return save_every or max(2, math.ceil(3 * write_s / step_s))


def measure(model, dist, data, batch_size, saves, save_every, rounds, scratch, log):
    """Every variant once per round; returns the per-fit figures and the medians (seconds)."""
    save_every = warm_up(model, dist, data, batch_size, scratch, log, save_every)
    x, y = data(saves * save_every)
    names = list(VARIANTS)
    fits = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            d = os.path.join(scratch, f"save_{r}_{name}")
            fits[name].append(run_fit(model, dist, x, y, batch_size, VARIANTS[name], save_every, d))
            shutil.rmtree(d, ignore_errors=True)
            log(f"save round {r} {name:14s} fit {fits[name][-1]['fit_s']:.2f} s")
    figures, median = {}, statistics.median
    for name in names[1:]:
        pairs = list(zip(fits[name], fits["none"], strict=True))  # Each fit and its round's none.
        figures[name] = {
            "blocked": median(statistics.fmean(f["blocked_s"]) for f, _ in pairs),
            "lost": median((f["fit_s"] - none["fit_s"]) / f["saves"] for f, none in pairs),
            "durable": median(statistics.fmean(f["durable_s"]) for f, _ in pairs),
        }
    return {"save_every": save_every, "saves": saves, "fits": fits, "figures": figures}
