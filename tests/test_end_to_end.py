"""benchmarks/end_to_end.py: the reweighting arithmetic against hand counts, and the whole chain
(simulate-volume, ingest, pick, model, cuts) on a tiny volume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fixtures import load_script, make_checkpoint


@pytest.fixture(scope="module")
def e2e():
    return load_script("benchmarks/end_to_end.py")


def test_rates_reweight_to_the_papers_prevalence(e2e):
    y = np.array([1] * 10 + [0] * 100, bool)
    sel = np.zeros(110, bool)
    sel[:8] = True  # 8 of 10 alpha decays
    sel[10:30] = True  # 20 of 100 background
    r = e2e.rates(y, sel)
    pi = 255 / 46948
    assert (r["alpha_kept"], r["background_kept"]) == (8, 20)
    assert r["candidates_per_10k_at_1_183"] == pytest.approx(1e4 * (pi * 0.8 + (1 - pi) * 0.2), abs=0.01)
    assert r["r_background_error"] == pytest.approx(math.sqrt(0.2 * 0.8 / 100), abs=1e-5)


def test_load_cut_is_the_ratio_of_reweighted_candidates(e2e):
    y = np.array([1] * 10 + [0] * 100, bool)
    cuts, model = np.zeros(110, bool), np.zeros(110, bool)
    cuts[:8] = model[:8] = True
    cuts[10:50] = True  # cuts keep 40 % of the background
    model[10:20] = True  # the model 10 %
    out = e2e.measure(y, {"cuts": cuts, "m": model})
    pi = 255 / 46948
    expect = (pi * 0.8 + (1 - pi) * 0.4) / (pi * 0.8 + (1 - pi) * 0.1)
    assert out["m"]["load_cut"] == pytest.approx(expect, abs=0.01)
    assert out["m"]["load_cut_error"] > 0
    assert "load_cut" not in out["cuts"]


def test_picker_errors_summarise_what_was_matched(e2e):
    errors = [{"found": True, "near": 2, "dxy_um": 0.5, "dz_um": -1.0, "multiplicity_error": -1},
              {"found": True, "near": 1, "dxy_um": 1.5, "dz_um": 2.0, "multiplicity_error": 0},
              {"found": False, "near": 0}]
    out = e2e.picker_errors(errors, fakes=6, fields=4)
    assert out["alpha_decays"] == 3 and out["with_a_vertex_within_duplicate_um"] == 2
    assert out["multiplicity_measured_minus_true"] == {"-1": 1, "0": 1}
    assert out["extra_vertices_per_alpha_decay"] == pytest.approx(1 / 3, abs=1e-3)
    assert out["fake_vertices_per_field"] == 1.5
    assert out["vertex_offset_xy_um_q50_68_95"][0] == pytest.approx(1.0)
    assert out["vertex_offset_abs_z_um_q50_68_95"][0] == pytest.approx(1.5)


def test_a_tiny_volume_runs_end_to_end(e2e, tmp_path, capsys):
    rng = np.random.default_rng(0)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", 0, rng.integers(0, 255, (8, 224, 224, 3), dtype=np.uint8))
    rc = e2e.main(["--model", f"tiny={ckpt}", "--work", str(tmp_path / "w"), "--seeds", "9901", "--fields", "1",
                   "--objects-per-field", "4", "--alpha-fraction", "1.0", "--field-px", "384", "--out", str(tmp_path / "e.json")])
    if rc == 2:  # the picker found no alpha decay in the one tiny field: the refusal is the result
        assert "no picked alpha decay" in capsys.readouterr().err
        return
    assert rc == 0
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["alpha_decays"] == 4 and 0 <= doc["alpha_picked"] <= 4
    assert doc["picked_vertices"] >= doc["picked_alpha_vertices"] >= 1
    cuts, tiny = doc["at_cuts_recall"]["cuts"], doc["at_cuts_recall"]["tiny"]
    assert tiny["alpha_kept"] >= cuts["alpha_kept"]  # the model is set to at least the cuts' recall
    assert set(doc["ap_on_picked"]) == {"tiny"}
    pe = doc["picker_errors"]
    assert pe["alpha_decays"] == 4 and pe["with_a_vertex_within_duplicate_um"] >= doc["alpha_picked"]


def test_a_bad_model_spec_is_refused(e2e, tmp_path):
    with pytest.raises(SystemExit) as exc:
        e2e.main(["--model", "nothing", "--work", str(tmp_path)])
    assert exc.value.code == 2


def test_a_shipped_threshold_is_measured_on_the_picked_objects(e2e):
    # 4 alpha decays (scores 3, 2, 1, -1) and 6 others (2.5, 0, -1, -2, -3, -4): a cut at 0.5 keeps 3 of 4 and 1 of 6
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    s = np.array([3.0, 2.0, 1.0, -1.0, 2.5, 0.0, -1.0, -2.0, -3.0, -4.0])
    out = e2e.at_threshold(y, s, {"threshold": 0.5, "achieved": {"recall": 0.9, "false_positive_rate": 0.1}})
    assert out["recall"] == 0.75 and out["false_positive_rate"] == round(1 / 6, 4) and out["selected"] == 4
    assert out["recall_ci"][0] < 0.75 < out["recall_ci"][1]
    assert out["promised_recall"] == 0.9
    assert out["precision_at_1_183"] == round(0.75 / 184 / (0.75 / 184 + (1 / 6) * 183 / 184), 4)


def test_a_threshold_of_another_model_is_refused(e2e, tmp_path, capsys):
    rng = np.random.default_rng(0)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", 0, rng.integers(0, 255, (8, 224, 224, 3), dtype=np.uint8))
    shipped = Path(__file__).resolve().parents[1] / "models" / "scanstream-cpu-cascade-pick.threshold.json"
    with pytest.raises(SystemExit) as exc:
        e2e.main(["--model", f"tiny={ckpt}", "--threshold", f"tiny={shipped}", "--work", str(tmp_path / "w")])
    assert exc.value.code == 2
    assert "calibrated for models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        e2e.main(["--model", f"tiny={ckpt}", "--threshold", f"other={shipped}", "--work", str(tmp_path / "w")])
