"""A tiny KerasHub Gemma on token files: 2 processes x 4 devices, laid out by
GemmaBackbone.get_layout_map; its loss falls; it resumes on 4 x 2 (another
mesh) with the batches and losses of an uninterrupted run."""

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, committed_steps, finals, metrics, simulate

pytestmark = pytest.mark.multiprocess

try:
    import keras_hub  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the extra (make setup): these tests must run there.
    pytest.skip("needs the .[hub] extra (README, KerasHub)", allow_module_level=True)


@pytest.fixture(scope="module")
def token_files(tmp_path_factory) -> tuple[Path, Path]:
    """The repository's text as bytes (the vocabulary of 256 the tiny config has)."""
    root = tmp_path_factory.mktemp("tokens")
    text = b"".join(p.read_bytes() for p in sorted((REPO / "trainer").glob("*.py")))
    ids = np.frombuffer(text, dtype=np.uint8).astype(np.uint16)
    split = int(len(ids) * 0.9)
    ids[:split].tofile(root / "train.bin")
    ids[split:].tofile(root / "val.bin")
    return root / "train.bin", root / "val.bin"


def _args(token_files, workdir, epochs):
    train, val = token_files
    return (
        "--config=configs/gemma.py:tiny",
        f"--config.data.kwargs.train={train}",
        f"--config.data.kwargs.validation={val}",
        f"--config.trainer.epochs={epochs}",
        "--config.trainer.log_every=1",
        f"--workdir={workdir}",
    )


def _specs(step_dir: Path) -> dict:
    """Partition spec of each saved variable, from Orbax's sharding metadata."""
    saved = json.loads((step_dir / "pytree" / "_sharding").read_text())
    specs = {}
    for key, value in saved.items():
        value = json.loads(value) if isinstance(value, str) else value
        specs[base64.b64decode(key).decode()] = tuple(value["partition_spec"])
    return specs


def _loss_by_step(workdir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(workdir) if "epoch" not in m}


def test_gemma_trains_with_its_layout_map_and_resumes_on_4x2(token_files, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    r = simulate(2, 4, *_args(token_files, uninterrupted, 3), "--config.mesh.shape=(2,4)")
    assert r.returncode == 0, r.stdout[-3000:]

    workdir = tmp_path / "moved"
    r = simulate(2, 4, *_args(token_files, workdir, 2), "--config.mesh.shape=(2,4)")
    assert r.returncode == 0, r.stdout[-3000:]
    assert committed_steps(workdir) == [8, 16]
    # The layout map was used: kernels over `model` (4 devices) and `data` (2).
    specs = _specs(workdir / "checkpoints" / "16")
    assert specs["trainable_variables.token_embedding.embeddings"] == ("model", "data")
    query = "trainable_variables.decoder_block_0.attention.query.kernel"
    assert specs[query] == ("model", "data", None)
    loss = _loss_by_step(workdir)
    assert loss[16] < loss[9] and loss[8] < loss[1]  # Falls within each epoch.

    r = simulate(4, 2, *_args(token_files, workdir, 3), "--config.mesh.shape=(4,2)")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed from step 16" in r.stdout
    done = finals(workdir)
    assert len(done) == 4 and {d["start_step"] for d in done} == {16}
    assert {d["final_step"] for d in done} == {24}
    assert _specs(workdir / "checkpoints" / "24")[query] == ("model", "data", None)
    # The same batches after the move: the losses of the uninterrupted run, to
    # float reduction order (another mesh), and still falling.
    expected, got = _loss_by_step(uninterrupted), _loss_by_step(workdir)
    assert sorted(got) == sorted(expected) == list(range(1, 25))
    np.testing.assert_allclose(
        [got[s] for s in range(1, 25)], [expected[s] for s in range(1, 25)], rtol=2e-3
    )
    assert got[24] < got[17] < got[1]
