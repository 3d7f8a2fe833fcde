"""Layout rules -> LayoutMap, distributions, and which rows each process feeds."""

import jax
import keras
import numpy as np
import pytest

from configs import lm
from trainer import mesh, models


def test_first_matching_rule_wins_and_unmatched_is_replicated():
    dm = keras.distribution.DeviceMesh((4, 2), ["data", "model"], jax.devices())
    rules = ((r"special/kernel$", ("model", None)), (r"kernel$", (None, "model")))
    layout_map = mesh.OrderedLayoutMap(dm, rules)
    assert layout_map["a/special/kernel"].axes == ("model", None)
    assert layout_map["a/other/kernel"].axes == (None, "model")
    assert layout_map["a/other/bias"] is None


def test_lm_rules_shard_attention_and_mlp_over_model_axis():
    config = lm.get_config("tiny")
    distribution = mesh.build_distribution((4, 2), config.mesh.axis_names, config.mesh.layout_rules)
    assert isinstance(distribution, keras.distribution.ModelParallel)
    with distribution.scope():
        model = models.build(config)
    specs = {v.path: tuple(v.value.sharding.spec) for v in model.trainable_variables}
    assert specs["block0_attention/query/kernel"] == (None, "model", None)
    assert specs["block0_attention/attention_output/kernel"] == ("model", None, None)
    assert specs["block0_mlp_in/kernel"] == (None, "model")
    assert specs["block0_mlp_out/kernel"] == ("model", None)
    assert all(s in ((), (None,), (None, None)) for p, s in specs.items() if "ln" in p)
    # The kernel really is split: each device holds half the heads.
    kernel = next(v for v in model.trainable_variables if v.path == "block0_attention/query/kernel")
    shard = kernel.value.addressable_shards[0].data
    assert shard.shape[1] == kernel.shape[1] // 2


def test_data_only_mesh_is_data_parallel():
    distribution = mesh.build_distribution((8,), ("data",), ())
    assert isinstance(distribution, keras.distribution.DataParallel)


def _grid(processes, devices_per_process, shape):
    return np.repeat(np.arange(processes), devices_per_process).reshape(shape)


@pytest.mark.parametrize(
    "processes,per,shape,names,expected",
    [
        (2, 4, (4, 2), ("data", "model"), [(0, 2), (1, 2)]),
        (4, 2, (4, 2), ("data", "model"), [(0, 4), (1, 4), (2, 4), (3, 4)]),
        # A data row spans two processes: both feed the same rows.
        (4, 1, (2, 2), ("data", "model"), [(0, 2), (0, 2), (1, 2), (1, 2)]),
        (1, 8, (8, 1), ("data", "model"), [(0, 1)]),
        (2, 1, (1, 2), ("data", "model"), [(0, 1), (0, 1)]),
    ],
)
def test_data_shard(processes, per, shape, names, expected):
    grid = _grid(processes, per, shape)
    got = [mesh.data_shard(grid, names, p) for p in range(processes)]
    assert [(s.index, s.count) for s in got] == expected


def test_device_array_is_topology_aware_and_the_distributions():
    names = ("data", "model")
    devices = mesh.device_array((4, 2), names)
    expected = jax.make_mesh((4, 2), names, devices=jax.devices()).devices
    assert devices.shape == (4, 2)
    assert [d.id for d in devices.flat] == [d.id for d in expected.flat]
    # Given another order (as a TPU topology gives), the distribution keeps it.
    shuffled = np.asarray(jax.devices())[[7, 6, 5, 4, 3, 2, 1, 0]].reshape(4, 2)
    distribution = mesh.build_distribution((4, 2), names, (), devices=shuffled)
    assert [d.id for d in distribution.device_mesh.devices.flat] == [7, 6, 5, 4, 3, 2, 1, 0]


class _Device:
    def __init__(self, process_index):
        self.process_index = process_index


def test_data_shard_follows_the_mesh_device_array_not_jax_devices_order():
    # 2 processes x 4 devices; the mesh puts process 1's devices in the first
    # batch rows: process 1 feeds the first block of each global batch.
    devices = np.asarray([_Device(p) for p in (1, 1, 1, 1, 0, 0, 0, 0)]).reshape(4, 2)
    grid = mesh.process_grid(devices)
    np.testing.assert_array_equal(grid, [[1, 1], [1, 1], [0, 0], [0, 0]])
    shards = [mesh.data_shard(grid, ("data", "model"), p) for p in (0, 1)]
    assert [(s.index, s.count) for s in shards] == [(1, 2), (0, 2)]
    # Interleaved along the model axis: each row spans both processes.
    devices = np.asarray([_Device(p) for p in (0, 1) * 4]).reshape(4, 2)
    shards = [mesh.data_shard(mesh.process_grid(devices), ("data", "model"), p) for p in (0, 1)]
    assert [(s.index, s.count) for s in shards] == [(0, 1), (0, 1)]
