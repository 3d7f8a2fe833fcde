"""checkpointing.load_model: a step written under any topology, loaded in one plain process."""

import os
import subprocess
import sys

import jax
import keras
import numpy as np
import pytest

import checkpointing
from checkpointing.loading import LoadArgumentError
from tests.checkpointing import custom_layers, procs
from tests.checkpointing.common import make_data, make_model


def optimizer_key(path: str) -> str:
    """An optimizer variable's path without the optimizer's name (made unique per process)."""
    return "optimizer/" + path.split("/", 1)[1]


def values(model: keras.Model) -> dict[str, np.ndarray]:
    """Every weight's and optimizer variable's value."""
    found = {v.path: np.asarray(v.value) for v in model.weights}
    found.update({optimizer_key(v.path): np.asarray(v.value) for v in model.optimizer.variables})
    return found


def mesh_4x2() -> keras.distribution.ModelParallel:
    mesh = keras.distribution.DeviceMesh((4, 2), ["data", "model"], jax.devices()[:8])
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["dense_1/kernel"] = (None, "model")
    layout_map["dense_2/kernel"] = ("model", None)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="data")


def fit(directory, model, **callback_args) -> keras.Model:
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(directory, save_freq=4, **callback_args)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    return model


@pytest.mark.multiprocess
def test_a_step_written_by_2_processes_on_a_4x2_mesh_loads_on_1_process(tmp_path):
    directory, out = tmp_path / "ckpt", tmp_path / "out"
    out.mkdir()
    codes = procs.run_all(
        procs.cluster("train", 2, 4, "4,2", directory, out), tmp_path / "logs", 240
    )
    assert codes == [0, 0], procs.tails(tmp_path / "logs", 2)
    assert checkpointing.list_steps(directory)[-1].topology == "2 proc x 8 cpu, mesh data=4 model=2"
    model = checkpointing.load_model(directory)  # No distribution: one device.
    saved = np.load(out / "weights_train_4,2.npz")  # Weights, then optimizer variables.
    weights = {v.path for v in model.weights}
    saved = {n if n in weights else optimizer_key(n): saved[n] for n in saved.files}
    assert int(model.optimizer.iterations) == 12
    loaded = values(model)
    assert sorted(loaded) == sorted(saved)
    for name, value in loaded.items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)
    assert all(len(v.value.sharding.device_set) == 1 for v in model.weights)

    # An earlier step, under a distribution: the variables take its layouts.
    with mesh_4x2().scope():
        earlier = checkpointing.load_model(directory, step=8)
    assert int(earlier.optimizer.iterations) == 8
    kernel = earlier.get_layer("dense_1").kernel.value
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")


def test_custom_layer_module_recorded_in_the_step_is_imported_in_a_fresh_process(tmp_path):
    keras.distribution.set_distribution(mesh_4x2())
    model = fit(tmp_path, custom_layers.make_model())
    keras.distribution.set_distribution(None)
    expected = tmp_path / "expected.npz"
    np.savez(expected, **{v.path: np.asarray(v.value) for v in model.weights})
    code = f"""
import sys, jax, numpy as np, checkpointing
assert "tests.checkpointing.custom_layers" not in sys.modules
model = checkpointing.load_model({str(tmp_path)!r})
expected = np.load({str(expected)!r})
for v in model.weights:
    np.testing.assert_array_equal(np.asarray(v.value), expected[v.path])
print(jax.device_count(), type(model.get_layer("scale")).__module__, int(model.optimizer.iterations))
"""
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env.update(KERAS_BACKEND="jax", PYTHONPATH=str(procs.REPO))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["1", "tests.checkpointing.custom_layers", "4"]


@pytest.fixture
def trained(tmp_path):
    return fit(tmp_path / "ckpt", make_model()), tmp_path / "ckpt"


def test_bad_directory_and_step(trained, tmp_path):
    _, directory = trained
    (tmp_path / "empty").mkdir()
    cases = [
        ({"directory": tmp_path / "missing"}, f"Received: directory={tmp_path / 'missing'}"),
        ({"directory": tmp_path / "empty"}, "no committed checkpoint step"),
        ({"directory": directory, "step": 5}, "(committed: [4]). Received: step=5"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(LoadArgumentError) as raised:
            checkpointing.load_model(**kwargs)
        assert expected in str(raised.value)
        assert isinstance(raised.value, ValueError)


def test_a_step_saved_with_weights_only_has_no_model_config(tmp_path):
    fit(tmp_path, make_model(), save_weights_only=True)
    with pytest.raises(ValueError, match=r"no model config .* Received: step=4"):
        checkpointing.load_model(tmp_path)


def test_import_modules_that_cannot_be_imported(trained):
    _, directory = trained
    with pytest.raises(LoadArgumentError) as raised:
        checkpointing.load_model(directory, import_modules=["podfit_no_such_module"])
    message = str(raised.value)
    assert "No module named 'podfit_no_such_module'" in message
    assert message.endswith("Received: import_modules=['podfit_no_such_module']")


def unregistered_layer(module: str) -> type:
    """A custom layer class that claims to live in `module` and is not registered."""
    return type("Ghost", (keras.layers.Layer,), {"__module__": module, "call": lambda s, x: x})


def model_with(layer_class) -> keras.Model:
    inputs = keras.Input(shape=(8,))
    hidden = layer_class(name="ghost")(keras.layers.Dense(4, name="dense_1")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, name="dense_2")(hidden))
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.mark.parametrize(
    "module, expected",
    [
        (
            "podfit_no_such_module",
            "No module named 'podfit_no_such_module'",
        ),
        ("json", "importing 'json' did not register 'Ghost'"),
        ("__main__", "defined in the script that trained it"),
    ],
)
def test_recorded_module_that_does_not_provide_the_class(tmp_path, module, expected):
    ghost = unregistered_layer(module)
    fit(tmp_path, model_with(ghost))
    with pytest.raises(LoadArgumentError) as raised:
        checkpointing.load_model(tmp_path)
    assert expected in str(raised.value)
    assert "Received: " in str(raised.value)
    # Given as a custom object, nothing is imported and the step loads.
    loaded = checkpointing.load_model(tmp_path, custom_objects={"Ghost": ghost})
    assert int(loaded.optimizer.iterations) == 4


def test_a_step_without_compile_config(tmp_path):
    model = make_model()
    model.get_compile_config = lambda: None  # As for a model compiled with unserializable args.
    fit(tmp_path, model)
    with pytest.raises(LoadArgumentError, match=r"no compile config.* Received: step=4"):
        checkpointing.load_model(tmp_path)
