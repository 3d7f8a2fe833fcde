"""ModelParallel on a (2, 2) mesh of 4 CPU devices; a resharded restore."""

import jax
import keras
import numpy as np
from jax.sharding import PartitionSpec as P

import checkpointing
from tests.checkpointing.common import make_data, make_model


def distribution(kernel_layout):
    devices = jax.devices()[:4]
    mesh = keras.distribution.DeviceMesh((2, 2), ["data", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["dense_1/kernel"] = kernel_layout
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="data")


def values(variables):
    return {v.path.split("/", 1)[-1]: np.asarray(v.value) for v in variables}


def test_model_parallel_save_and_resharded_restore(tmp_path):
    x, y = make_data()
    keras.distribution.set_distribution(distribution((None, "model")))
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, max_to_keep=2)
    model.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, verbose=0, callbacks=[callback])
    assert [i.step for i in checkpointing.list_steps(tmp_path)] == [6, 12]
    saved_weights = values(model.weights)
    saved_optimizer = values(model.optimizer.variables)

    # The same kernel, now sharded on the other axis.
    keras.distribution.set_distribution(distribution(("data", None)))
    target = make_model()
    restored = checkpointing.restore_latest(tmp_path, target)
    kernel = target.get_layer("dense_1").kernel.value
    assert kernel.sharding.spec == P("data", None)
    assert restored.topology.mesh_shape == (2, 2)
    assert restored.topology.mesh_axis_names == ("data", "model")
    assert restored.topology.partition_specs["trainable_variables/dense_1/kernel"] == (
        None,
        "model",
    )
    for name, value in values(target.weights).items():
        np.testing.assert_array_equal(value, saved_weights[name], err_msg=name)
    for name, value in values(target.optimizer.variables).items():
        np.testing.assert_array_equal(value, saved_optimizer[name], err_msg=name)

    # And through Keras' own loader, as in the guide.
    loaded = keras.saving.load_model(tmp_path)
    assert loaded.get_layer("dense_1").kernel.value.sharding.spec == P("data", None)

    # Training goes on from the restored state under the new layout.
    target.fit(x, y, batch_size=16, epochs=3, initial_epoch=2, validation_split=0.25, verbose=0)
    assert int(target.optimizer.iterations) == 18
