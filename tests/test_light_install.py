"""The light install: classify from ONNX exports without torch (docs/install.md).

Two parts. In this (full) environment: the numpy path that the light install scores with
(:func:`scanstream.network.arrays.preprocess_array`, ``Ensemble(arrays=True)``) against torch's.
In the light environment that ``make test`` builds beside it (``.venv-light``: the dependencies
without torch, installed from the wheels ``make env`` saved; docs/install.md): torch is absent,
``scanstream classify`` with an export made here writes the candidate table the torch checkpoint
writes here (scores within the export's tolerance), the reading verbs run on it, and the verbs
that need torch say in one line what to install.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from test_export import tiny_checkpoint

from scanstream.candidates.table import read_candidates
from scanstream.inference.classify import classify
from scanstream.inference.engine import Ensemble, score_range
from scanstream.inference.export import export_onnx
from scanstream.network.arrays import preprocess_array, resize_taps
from scanstream.network.model import preprocess

ROOT = Path(__file__).resolve().parents[1]
#: The light environment's interpreter (make test builds .venv-light; SCANSTREAM_LIGHT_PYTHON names another).
LIGHT_PYTHON = Path(os.environ.get("SCANSTREAM_LIGHT_PYTHON", ROOT / ".venv-light" / "bin" / "python"))
#: Logits of the light path against torch's: the export's own tolerance is on one input, but the numpy
#: resize differs from torch's by float32 rounding (~1e-6 on the input), which the tiny test network,
#: its last layer scaled up tenfold, turns into up to ~1e-3 on logits of a few units.
LIGHT_TOL = {"atol": 2e-3, "rtol": 1e-3}
needs_light = pytest.mark.skipif(not LIGHT_PYTHON.exists(),
                                 reason=f"no light environment at {LIGHT_PYTHON} (make test builds it)")


@pytest.mark.parametrize("size", [224, 112, 96, 32, 300])
def test_preprocess_array_equals_torchs_preprocess(size):
    crops = np.random.default_rng(size).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    got = preprocess_array(crops, size)
    for halving in (False, True):
        want = preprocess(torch.from_numpy(crops), size, halving=halving).numpy()
        assert got.shape == want.shape == (3, 3, size, size) and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, atol=1e-4)  # float32 rounding of the filter weights


def test_resize_taps_sum_to_one_and_stay_inside():
    for n_in, n_out in [(224, 112), (224, 96), (224, 300), (7, 3)]:
        index, weight = resize_taps(n_in, n_out)
        np.testing.assert_allclose(weight.sum(axis=1), 1.0)
        assert index.min() >= 0 and index.max() < n_in and (weight >= 0).all()


def test_preprocess_array_refuses_other_crops():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_array(np.zeros((2, 224, 224, 3), np.float32), 112)


@pytest.fixture(scope="module", params=[False, True], ids=["pixels", "cascade"])
def exported(request, tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("light")
    ckpt = tiny_checkpoint(d / "m.safetensors", fused=request.param)
    export_onnx(ckpt, d / "m.onnx")
    return ckpt, d / "m.onnx"


def test_the_numpy_path_scores_exports_as_torch_scores_the_checkpoint(exported, store_factory):
    ckpt, onnx_path = exported
    store = store_factory(n=40)
    want = score_range(Ensemble([ckpt], device="cpu", precision="fp32"), store, 0, store.n, batch_size=16)
    ens = Ensemble([onnx_path], device="cpu", arrays=True)
    got = score_range(ens, store, 0, store.n, batch_size=16)
    assert ens.arrays and want.std() > 0.05
    np.testing.assert_allclose(got, want, **LIGHT_TOL)


def test_the_numpy_path_takes_exports_only(exported):
    with pytest.raises(ValueError, match="ONNX exports only"):
        Ensemble([exported[0]], device="cpu", arrays=True)


def light(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python args...`` in the light environment, from the repository root."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(LIGHT_PYTHON), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


@needs_light
def test_the_light_environment_has_no_torch():
    done = light("-c", "import torch")
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr


@needs_light
@pytest.mark.slow
def test_light_classify_from_an_export_equals_the_torch_table(exported, store_factory, tmp_path):
    ckpt, onnx_path = exported
    store = store_factory("light.zarr", n=48)
    classify([store.path], [ckpt], tmp_path / "torch", workers=1, device="cpu", precision="fp32", progress=False,
             processes=False)
    done = light("-m", "scanstream", "classify", str(store.path), "--model", str(onnx_path), "--out",
                 str(tmp_path / "light"), "--workers", "1", "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    want, got = (read_candidates(tmp_path / name).sort_by("object_id") for name in ("torch", "light"))
    assert got.column("object_id").equals(want.column("object_id")) and got.num_rows == store.n
    scores = np.asarray(want.column("score"))
    assert scores.std() > 0.05
    np.testing.assert_allclose(np.asarray(got.column("score")), scores, **LIGHT_TOL)
    for verb in (["info", str(tmp_path / "light")], ["query", str(tmp_path / "light"), "--top", "3"]):
        shown = light("-m", "scanstream", *verb)
        assert shown.returncode == 0, shown.stderr[-2000:]
    assert str(pc.max(want.column("score")).as_py())[:4] in light(
        "-m", "scanstream", "query", str(tmp_path / "light"), "--top", "1", "--format", "csv").stdout


@needs_light
@pytest.mark.parametrize("argv", [["train", "t.zarr", "v.zarr", "--out", "run"], ["export", "CKPT", "--out", "m.onnx"],
                                  ["classify", "STORE", "--model", "CKPT", "--out", "c"]])
def test_a_verb_needing_torch_names_the_extra_in_one_line(argv, exported, store_factory, tmp_path):
    store = store_factory("t.zarr", n=8)
    argv = [str(exported[0]) if a == "CKPT" else str(store.path) if a == "STORE" else a for a in argv]
    argv = [str(tmp_path / a) if a in ("t.zarr", "v.zarr", "run", "m.onnx", "c") else a for a in argv]
    done = light("-m", "scanstream", *argv)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"scanstream {argv[0]}: error:"), done.stderr
    assert "pip install 'scanstream[torch]'" in lines[0]
