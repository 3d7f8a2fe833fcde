"""README.md's "Checkpoints and resume" commands, as a newcomer runs them after `make run`.

The commands are read from the section's code blocks (so the README cannot
drift from what is tested) and run each in a fresh interpreter from the
repository root, with one CPU device, on the output of a `make run`-like
simulation: 2 processes x 4 CPU devices of `configs/lm.py:tiny`. What they
load is compared with the same step restored in the training topology.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker
import pytest

from configs import lm
from tests.checkpointing import procs
from tests.helpers import REPO, env, simulate

pytestmark = pytest.mark.multiprocess

SECTION = "## Checkpoints and resume"
PRESET = "tiny"
WORKER = Path(__file__).with_name("restore_worker.py")


def _final_step(preset: str | None) -> int:
    config = lm.get_config(preset)
    return config.trainer.epochs * config.trainer.steps_per_epoch


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block of the section."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def substituted(code: str, names: dict[str, str]) -> str:
    """`code` with the README's paths and step replaced; each must occur in the section."""
    for old, new in names.items():
        code = code.replace(old, new)
    return code


def shell_env() -> dict:
    """A newcomer's shell: one CPU device, no Keras backend chosen (only the repository on the path)."""
    return {k: v for k, v in env().items() if k not in ("JAX_NUM_CPU_DEVICES", "KERAS_BACKEND")}


def python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c CODE` in a fresh interpreter, from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dump(model: str, out: Path) -> str:
    """Code that saves `model`'s variables and its predictions on fixed tokens to `out`."""
    return f"""
import jax as _jax
import numpy as _np
_named = [(v.path, v) for v in {model}.weights]
_named += [(f"optimizer/{{v.path.split('/', 1)[-1]}}", v) for v in {model}.optimizer.variables]
_seq = {model}.inputs[0].shape[1]
_tokens = (_np.arange(2 * _seq) * 7 % 256).reshape(2, _seq).astype("int32")
_np.savez({str(out)!r}, predictions=_np.asarray({model}.predict(_tokens, verbose=0)),
          **{{n: _np.asarray(v.value) for n, v in _named}})
print("devices", _jax.device_count(), "step", int({model}.optimizer.iterations))
"""


def assert_same_state(loaded: Path, reference: Path) -> None:
    got, want = np.load(loaded), np.load(reference)
    assert sorted(set(got.files) - {"predictions"}) == sorted(want.files)
    for name in want.files:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2 x 4 simulation, and its last step restored in that topology (npz)."""
    root = tmp_path_factory.mktemp("readme")
    workdir = root / "runs" / "default"
    r = simulate(2, 4, f"--config=configs/lm.py:{PRESET}", f"--workdir={workdir}", timeout=180)
    assert r.returncode == 0, r.stdout[-3000:]
    reference = root / "reference.npz"
    port = portpicker.pick_unused_port()
    commands = [
        [sys.executable, str(WORKER), f"--process_id={i}", "--num_processes=2", f"--port={port}"]
        + ["--devices=4", f"--preset={PRESET}", f"--workdir={workdir}", f"--out={reference}"]
        for i in range(2)
    ]
    codes = procs.run_all(commands, root / "restore_logs", 180)
    assert codes == [0, 0], procs.tails(root / "restore_logs", 2)
    step = _final_step(PRESET)
    names = {
        "runs/default": str(workdir),
        "/tmp/lm.keras": str(root / "lm.keras"),
        f"--step {_final_step(None)}": f"--step {step}",
    }
    section = "".join(code for _, code in readme_blocks())
    for old in names:
        assert old in section, f"README.md's {SECTION!r} no longer mentions {old!r}"
    return {"root": root, "workdir": workdir, "step": step, "names": names, "ref": reference}


def test_readme_shell_commands(run):
    commands = [
        line
        for lang, code in readme_blocks()
        if lang == "sh"
        for line in code.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    seen = []
    for line in commands:
        argv = shlex.split(substituted(line, run["names"]))
        assert argv[:3] == [".venv/bin/python", "-m", "checkpointing"], line
        done = subprocess.run(
            [sys.executable, *argv[1:]],
            cwd=REPO,
            env=shell_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        command, out, step = argv[3], done.stdout, run["step"]
        seen.append(command)
        if command == "list":
            rows = out.splitlines()[1:]
            assert [row.split()[0] for row in rows] == [str(step)], out
            assert "2 proc x 8 cpu, mesh data=4 model=2" in rows[-1], out
        elif command == "inspect":
            report = json.loads(out)
            assert report["step"] == step
            assert report["record"]["progress"]["global_step"] == step
            assert "model_config" in report["checkpointables"]
        elif command == "verify":
            assert out.split()[:2] == [str(step), "ok"], out
        elif command == "export":
            assert f"exported step {step}" in out, out
            check_exported(Path(argv[5]), run)
        else:
            raise AssertionError(f"README command not covered by this test: {line}")
    assert sorted(seen) == ["export", "inspect", "list", "verify"]


def check_exported(keras_file: Path, run) -> None:
    """The .keras file: needs the custom class registered (README), then equals the step."""
    load = f"import keras\nmodel = keras.saving.load_model({str(keras_file)!r})\n"
    # Keras alone (on JAX, chosen by hand: nothing of podfit imported).
    alone = python("import os\nos.environ['KERAS_BACKEND'] = 'jax'\n" + load)
    assert alone.returncode != 0
    assert "Could not locate class 'PositionEmbedding'" in alone.stderr, alone.stderr[-3000:]
    out = run["root"] / "exported.npz"
    done = python("import trainer.models\n" + load + dump("model", out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["devices", "1", "step", str(run["step"])]
    assert_same_state(out, run["ref"])
    np.testing.assert_array_equal(
        np.load(out)["predictions"], np.load(loaded_by_snippet(run))["predictions"]
    )


def loaded_by_snippet(run) -> Path:
    """Runs the README's loading snippet once (cached); returns what it loaded (npz)."""
    if "loaded" not in run:
        snippets = [code for lang, code in readme_blocks() if lang == "python"]
        assert len(snippets) == 1, snippets
        out = run["root"] / "loaded.npz"
        done = python(substituted(snippets[0], run["names"]) + dump("model", out))
        assert done.returncode == 0, done.stderr[-3000:]
        # One process, one device: the step was written by 2 processes on 8.
        assert done.stdout.split() == ["devices", "1", "step", str(run["step"])]
        run["loaded"] = out
    return run["loaded"]


def test_readme_loading_snippet(run):
    out = loaded_by_snippet(run)
    assert_same_state(out, run["ref"])
    predictions = np.load(out)["predictions"]
    config = lm.get_config(PRESET)
    assert predictions.shape == (2, config.data.kwargs.seq_len, config.model.kwargs.vocab_size)
    assert np.isfinite(predictions).all()


def test_stock_keras_load_model_fails_on_the_multiprocess_step_as_the_readme_says(run):
    readme = (REPO / "README.md").read_text()
    quoted = "sharding passed to deserialization should be specified"
    assert quoted in readme
    directory = run["workdir"] / "checkpoints"
    done = python(f"import trainer.models, keras\nkeras.saving.load_model({str(directory)!r})")
    assert done.returncode != 0
    assert quoted in done.stderr, done.stderr[-3000:]
