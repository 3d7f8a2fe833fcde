"""The final weights digest: first-replica shards only, no gather of the weights."""

import keras
import numpy as np

from tests.checkpointing.common import make_model
from trainer import mesh
from trainer.train import weights_digest


def _model(distribution=None):
    keras.utils.set_random_seed(0)
    if distribution is None:
        return make_model()
    with distribution.scope():
        return make_model()


def test_equal_weights_equal_digest_and_one_ulp_differs():
    a, b = _model(), _model()
    assert weights_digest(a) == weights_digest(b)
    kernel = b.weights[0]
    value = np.asarray(kernel.value).copy()
    value.flat[0] = np.nextafter(value.flat[0], np.float32(np.inf))
    kernel.assign(value)
    assert weights_digest(a) != weights_digest(b)


def test_replicas_count_once():
    # Replicated over the 8 devices of this process: 8 shards each, one hashed.
    replicated = _model(mesh.build_distribution((8,), ("data",), ()))
    assert len(replicated.weights[0].value.addressable_shards) == 8
    assert weights_digest(replicated) == weights_digest(_model())


def test_sharded_weights_hash_every_shard():
    distribution = mesh.build_distribution(
        (4, 2), ("data", "model"), ((r"dense_1/kernel$", (None, "model")),)
    )
    a, b = _model(distribution), _model(distribution)
    assert weights_digest(a) == weights_digest(b)
    kernel = next(v for v in b.weights if len(v.value.sharding.device_set) > 1 and v.ndim == 2)
    value = np.asarray(kernel.value).copy()
    value[:, -1] += 1.0  # Only in the second shard along the model axis.
    kernel.assign(value)
    assert weights_digest(a) != weights_digest(b)
