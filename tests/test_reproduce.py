"""pipelines/reproduce_paper.py: presets, config errors, the report beside the paper's numbers.

The pipeline itself runs for many minutes (its CPU preset's output is committed under
docs/reproduce/); these tests cover what can go wrong before it starts and its report.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from scanstream import metrics as mt
from scanstream.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rp():
    """pipelines/reproduce_paper.py, imported as a module from the pipelines folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "pipelines"))
        yield importlib.import_module("reproduce_paper")


@pytest.mark.parametrize("preset", ["reproduce_paper.toml", "reproduce_paper_cpu.toml"])
def test_presets_load(rp, preset):
    cfg = rp.load_config(ROOT / "pipelines" / preset)
    assert cfg.dataset.scale > 0 and cfg.search.seeds >= 1
    assert all(0 <= m <= 30 for m in cfg.search.m)


def test_full_preset_is_the_papers_protocol(rp):
    cfg = rp.load_config(ROOT / "pipelines" / "reproduce_paper.toml")
    assert cfg.dataset.scale == 1.0
    assert (cfg.search.n, cfg.search.m, cfg.search.seeds) == ((2, 4, 6, 8), (6, 12, 18, 24, 30), 4)
    assert (cfg.search.backbone, cfg.search.input_size, cfg.search.batch_size) == ("resnet50", 224, 96)


def test_scale_override(rp):
    cfg = rp.load_config(ROOT / "pipelines" / "reproduce_paper_cpu.toml", scale=0.02)
    assert cfg.dataset.scale == 0.02


@pytest.mark.parametrize(
    "text, match",
    [
        ("[datasets]\nscale = 1\n", "unknown section"),
        ("[dataset]\nscales = 1\n", "unknown key"),
        ("[dataset]\nscale = 0\n", "scale must be in"),
        ("[dataset]\nscale = 11\n", "scale must be in"),
        ("[search]\nn = 2\n", "list of integers"),
        ("[search]\nm = [6, 'x']\n", "list of integers"),
        ("[threshold]\ntarget_recall = 'paper'\n", "target_recall"),
        ("[threshold]\ntarget_recall = 1.5\n", "target_recall"),
        ("[dataset\n", "not a readable TOML"),
        ("dataset = 3\n", "must be a table"),
    ],
)
def test_bad_configs(rp, tmp_path, text, match):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        rp.load_config(f)


def test_missing_config(rp, tmp_path):
    with pytest.raises(ConfigError, match="no such config"):
        rp.load_config(tmp_path / "nope.toml")


def test_main_bad_config_exits_2_with_one_line(rp, tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text("[dataset]\nscale = -1\n")
    assert rp.main(["--config", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scale" in err
    assert not (tmp_path / "o").exists()


def test_target_recall_choices(rp, tmp_path):
    former = {"summary": {"valid": {"recall": {"value": 0.7}}, "test": {"recall": {"value": 0.8}}}}
    f = tmp_path / "c.toml"
    for value, want in (("'former-valid'", 0.7), ("'former-test'", 0.8), ("0.9", 0.9)):
        f.write_text(f"[threshold]\ntarget_recall = {value}\n")
        assert rp.target_recall(rp.load_config(f), former)[0] == want


def test_report_beside_the_paper(rp):
    """render_reproduction on measured-looking metrics built with the real evaluation code."""
    from dataclasses import asdict

    from scanstream.evaluation.evaluate import EvalData, compute_metrics
    from scanstream.evaluation.loading import ScoreSet
    from scanstream.evaluation.report import render_reproduction

    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.05).astype(np.int8)
    y[:2] = [1, 0]
    ids = np.array([f"o{i}" for i in range(400)], dtype=object)
    models = [ScoreSet(name, ids, 3.0 * y + rng.normal(0, 1, 400)) for name in ("ensemble", "n2_m24_s0", "n2_m24_s1")]
    models[0] = ScoreSet("ensemble", ids, models[0].scores, threshold=1.0)
    former_sel = (y == 1) & (rng.random(400) < 0.8) | (rng.random(400) < 0.2)
    ev = compute_metrics(EvalData(ids, y, ["dust"] * 400, models, former_sel, None), spread_over=["n2_m24_s0", "n2_m24_s1"])
    cfg = rp.load_config(ROOT / "pipelines" / "reproduce_paper_cpu.toml")
    former_op = mt.operating_point_from_selection(y, former_sel)
    summary = {"selected": former_op.selected, "true_positives": former_op.true_positives, "alpha": former_op.positives,
               "precision": former_op.precision.to_dict(), "recall": former_op.recall.to_dict()}
    m = {
        "config": {**asdict(cfg), "source": "x.toml"},
        "table1": {"TRAIN": {"alpha": 90, "other": 1500, "total": 1590}, "VALID": {"alpha": 21, "other": 381, "total": 402},
                   "TEST": mt.class_counts(y)},
        "former": {"config": {"min_multiplicity": 4, "max_multiplicity": 5, "min_length_um": 10.5, "max_length_um": 55.5},
                   "summary": {"valid": summary, "test": summary}},
        "search": {"best": {"n": 2, "m": 24},
                   "summary": [{"n": 2, "m": 24, "trials": 2, "val_ap_mean": 0.9, "val_ap_std": 0.01, "best_epoch_mean": 4}],
                   "best_trials": [{"best_epoch": 3}, {"best_epoch": 5}],
                   "test": {"ap_per_model": {"n2_m24_s0": 0.7, "n2_m24_s1": 0.72}, "ap": {"value": 0.71, "error": 0.014},
                            "ap_ensemble": 0.73}},
        "threshold": {"target_recall": 0.8, "source": "the former method's recall on VALID",
                      "record": {"threshold": 1.0, "achieved": {"recall": 0.81, "precision": 0.5}}},
        "evaluation": ev,
        "figures": {"fig2": "fig2_loss_curves.png", "fig3": "fig3_heatmap.png", "fig4": "fig4_score_distributions.png",
                    "fig5": "fig5_pr_curves.png"},
        "seconds": {"simulate": 60.0, "search": 600.0},
    }
    md = render_reproduction(m)
    for needle in ("Table 1", "Table 2", "Figure 2", "Figure 3", "Figure 4", "Figure 5", "(fig5_pr_curves.png)",
                   "0.980 ± 0.002", "0.740 ± 0.009", "0.081 ± 0.006", "6.8 ± 0.6", "N = 2, M = 24", "0.710 ± 0.014",
                   "15885", "calibrated threshold"):
        assert needle in md, needle
    t2 = ev["at_former_recall"]["table2"]
    assert f"{t2['cnn']['candidates']['value']:.0f} ± {t2['cnn']['candidates']['error']:.0f}" in md
    more = t2["cnn"]["candidates"]["value"] > t2["former"]["candidates"]["value"]
    assert f"{'more' if more else 'fewer'} objects to inspect" in md
    assert f"TEST {m['table1']['TEST']['alpha'] / m['table1']['TEST']['total']:.4f}" in md
