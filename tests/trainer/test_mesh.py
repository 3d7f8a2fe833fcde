"""Layout rules -> LayoutMap, distributions, and which rows each process feeds."""

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class _TpuDevice:
    """What mesh_utils reads of a TPU device (jax.Device cannot be built by hand)."""

    id: int
    process_index: int
    slice_index: int
    coords: tuple[int, int, int]
    core_on_chip: int = 0
    platform: str = "tpu"
    device_kind: str = "TPU v4"


def _two_slices(hosts_per_slice: int = 2) -> list[_TpuDevice]:
    """2 slices x 4 chips (2x2x1), the hosts of a slice owning rows y; listed in reverse."""
    devices = []
    for s in range(2):
        for i, (x, y) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
            host = s * hosts_per_slice + i * hosts_per_slice // 4
            devices.append(_TpuDevice(4 * s + i, host, s, (x, y, 0)))
    return devices[::-1]


def test_dcn_shape_puts_slices_along_the_data_axis():
    names = ("data", "model")
    devices = mesh.device_array((4, 2), names, (2, 1), devices=_two_slices())
    assert devices.shape == (4, 2)
    slices = np.vectorize(lambda d: d.slice_index)(devices)
    np.testing.assert_array_equal(slices, [[0, 0], [0, 0], [1, 1], [1, 1]])
    # Within a slice, the (2, 2) mesh follows the chips' coordinates.
    assert [d.coords[:2] for d in devices[:2].flat] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    # Each host holds one data row; each slice's hosts feed their own rows.
    grid = mesh.process_grid(devices)
    shards = [mesh.data_shard(grid, names, p) for p in range(4)]
    assert [(s.index, s.count) for s in shards] == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_dcn_shape_along_the_model_axis_makes_data_rows_span_slices():
    names = ("data", "model")
    devices = mesh.device_array((4, 2), names, (1, 2), devices=_two_slices(hosts_per_slice=1))
    slices = np.vectorize(lambda d: d.slice_index)(devices)
    np.testing.assert_array_equal(slices, [[0, 1]] * 4)
    # One host per slice: every data row spans both, so both feed the whole batch.
    grid = mesh.process_grid(devices)
    np.testing.assert_array_equal(grid, [[0, 1]] * 4)
    shards = [mesh.data_shard(grid, names, p) for p in (0, 1)]
    assert [(s.index, s.count) for s in shards] == [(0, 1), (0, 1)]


def test_dcn_shape_that_does_not_match_the_slices_is_refused():
    with pytest.raises(ValueError, match="Number of slices 2"):
        mesh.device_array((8, 1), ("data", "model"), (4, 1), devices=_two_slices())


def test_no_dcn_shape_is_the_one_slice_mesh():
    names = ("data", "model")
    expected = jax.make_mesh((4, 2), names, devices=jax.devices()).devices
    got = mesh.device_array((4, 2), names, ())
    assert [d.id for d in got.flat] == [d.id for d in expected.flat]
