"""``scanstream benchmark`` on a tiny store and model (the report, the picker log, refusals), and the
fast exact halving in preprocess against F.interpolate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import draw_crops, make_store

from scanstream.cli import main
from scanstream.errors import InputError
from scanstream.inference.benchmark import (
    PickerRate,
    check_rate,
    format_report,
    projection,
    read_picker_log,
    run_benchmark,
)
from scanstream.network.checkpoint import save_checkpoint
from scanstream.network.model import ModelConfig, build_model, preprocess


def _checkpoint(path: Path, size: int = 32) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", input_size=size)
    save_checkpoint(path, build_model(cfg).eval(), model_config=cfg, train_config={}, data_hash="test", metrics={})
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from distributed import LocalCluster

    d = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    yield {"dir": d, "store": make_store(d / "s.zarr", 48).path, "model": _checkpoint(d / "m.safetensors"),
           "scheduler": cluster.scheduler_address}
    cluster.close()
    torch.set_num_threads(threads)


def test_report_has_every_figure_and_projection(env):
    picker = PickerRate(check_rate(20.0), "given")
    r = run_benchmark(env["store"], [env["model"]], picker=picker, objects=3_000_000, scheduler=env["scheduler"],
                      device="cpu", batch_size=16)
    assert r["pipeline"]["crops"] == 48 and r["pipeline"]["warm_crops_per_s"] > 0
    assert r["in_process"]["model_only_crops_per_s"] > 0 and r["in_process"]["forward_crops_per_s"] > 0
    assert set(r["in_process"]["stages_s_per_1000"]) == {"read", "decode", "features", "resize", "forward", "write"}
    assert r["former_method"]["cuts_objects_per_s"] > 0
    p = r["projection"]
    assert p["sheet_seconds"] == pytest.approx(3_000_000 / r["pipeline"]["warm_crops_per_s"], rel=1e-3)
    assert p["scanners_per_node"] == pytest.approx(r["pipeline"]["warm_crops_per_s"] / 20.0, rel=1e-2)
    text = format_report(r)
    assert "scanners per node" in text and "model only" in text
    json.dumps(r)


def test_projection_without_picker_has_no_scanner_count():
    p = projection(100.0, 1000, None)
    assert p == {"sheet_objects": 1000, "sheet_seconds": 10.0}
    assert projection(100.0, 1000, PickerRate(200.0, "x"))["keeps_pace"] is False


def test_picker_log_rate(tmp_path):
    f = tmp_path / "picker.csv"
    f.write_text("# the picker\ntimestamp,objects\n2026-12-01T03:00:00,500\n2026-12-01T03:00:10,100\n\n"
                 "2026-12-01T03:00:20+00:00,300\n")
    r = read_picker_log(f)
    assert r.objects == 400 and r.seconds == pytest.approx(20.0) and r.objects_per_s == pytest.approx(20.0)
    f.write_text("100.0,5\n104.0,8\n")
    assert read_picker_log(f).objects_per_s == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("2026-12-01T03:00:00,5\nyesterday,7\n", ":2:"),
        ("2026-12-01T03:00:00,5\n2026-12-01T03:00:01,-3\n", ":2:"),
        ("2026-12-01T03:00:00,5\n2026-12-01T03:00:01,3,9\n", ":2:"),
        ("2026-12-01T03:00:10,5\n2026-12-01T03:00:01,3\n", ":2:"),
        ("2026-12-01T03:00:00,5\n", "at least two"),
        ("2026-12-01T03:00:00,5\n2026-12-01T03:00:00,5\n", "no time passes"),
        ("2026-12-01T03:00:00,5\n2026-12-01T03:00:10,0\n", "> 0"),
    ],
)
def test_picker_log_refused_naming_the_line(tmp_path, text, needle):
    f = tmp_path / "picker.csv"
    f.write_text(text)
    with pytest.raises(InputError, match=needle):
        read_picker_log(f)


@pytest.mark.parametrize("rate", [0, -1.0, float("nan"), float("inf")])
def test_rate_at_or_below_zero_refused(rate):
    with pytest.raises(InputError, match="picker rate"):
        check_rate(rate)


def test_cli_refusals_exit_2_before_timing(env, tmp_path, capsys, monkeypatch):
    big = _checkpoint(tmp_path / "big.safetensors", size=256)
    base = ["benchmark", str(env["store"]), "--model"]
    assert main([*base, str(env["model"]), "--picker-rate", "0"]) == 2
    assert main([*base, str(big)]) == 2
    bad = tmp_path / "log.csv"
    bad.write_text("2026-12-01T03:00:00,5\nnot a line\n")
    assert main([*base, str(env["model"]), "--picker-log", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "0" in err[0] and "256 px" in err[1] and f"{bad}:2:" in err[2]
    assert not (tmp_path / "out.json").exists()


def test_cli_prints_table_and_writes_json(env, tmp_path, capsys):
    out = tmp_path / "bench.json"
    log = tmp_path / "picker.csv"
    log.write_text("0,0\n10,50\n")
    rc = main(["benchmark", str(env["store"]), "--model", str(env["model"]), "--picker-log", str(log),
               "--objects", "1000", "--scheduler", env["scheduler"], "--device", "cpu", "--batch-size", "16", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "classify pipeline, warm" in text and "where the time goes" in text
    r = json.loads(out.read_text())
    assert r["picker"]["objects_per_s"] == pytest.approx(5.0)
    assert np.isfinite(r["projection"]["scanners_per_node"])


@pytest.mark.parametrize(("side", "size"), [(224, 112), (64, 32), (10, 5), (4, 2)])
def test_halving_equals_interpolate(side, size):
    crops = torch.from_numpy(np.random.default_rng(side).integers(0, 256, (3, side, side, 3), dtype=np.uint8))
    fast, ref = preprocess(crops, size), preprocess(crops, size, halving=False)
    assert fast.shape == ref.shape == (3, 3, size, size) and fast.is_contiguous()
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


def test_shipped_cascade_logits_unchanged_by_halving():
    from scanstream.network.checkpoint import load_checkpoint

    ck = load_checkpoint(Path(__file__).resolve().parents[1] / "models" / "scanstream-cpu-cascade.safetensors")
    crops = torch.from_numpy(draw_crops(np.array([1, 0, 1, 0, 0, 1, 0, 0]), seed=5))
    f = torch.from_numpy(np.random.default_rng(0).normal(size=(8, ck.model_config.inputs)).astype(np.float32))
    with torch.inference_mode():
        fast = ck.model(preprocess(crops, ck.model_config.input_size), f)
        ref = ck.model(preprocess(crops, ck.model_config.input_size, halving=False), f)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-4)


def test_cascade_step_gives_the_network_full_batches():
    from scanstream.inference.engine import cascade_step
    from scanstream.inference.rows import ObjectInputs

    logits = np.r_[np.zeros(12), -np.ones(88)].astype(np.float32)  # 12 % pass a prefilter at 0
    cascade = ObjectInputs(np.zeros((100, 1), np.float32), logits, 0.0)
    assert cascade_step([cascade], 64) == 534  # 64 / 0.12, rounded up
    assert cascade_step([cascade, None], 64) == 64  # a pixels-only model sees every row anyway
    assert cascade_step(None, 64) == 64
    none_kept = ObjectInputs(np.zeros((10, 1), np.float32), -np.ones(10, np.float32), 0.0)
    assert cascade_step([none_kept], 64) == 16 * 64


def test_picker_rate_measured_on_a_volume(tmp_path):
    """--volume: the picker's own rate, from `scanstream pick` over an ingested z-stack volume."""
    from scanstream.inference.benchmark import measure_picker

    sim = tmp_path / "sim"
    assert main(["simulate-volume", str(sim), "--fields", "1", "--seed", "3", "--objects-per-field", "4",
                 "--alpha-fraction", "0.75", "--field-px", "384", "--depth-um", "12", "--no-progress"]) == 0
    assert main(["ingest", str(sim), str(tmp_path / "v.zarr"), "--format", "stack"]) == 0
    rate = measure_picker(tmp_path / "v.zarr", workers=1)
    assert rate.objects > 0 and rate.seconds > 0 and rate.objects_per_s == pytest.approx(rate.objects / rate.seconds, rel=1e-3)
    assert "scanstream pick" in rate.source and not list(tmp_path.glob("*picked*"))
    # fields/s picking beside reading the planes alone, and their ratio
    assert rate.fields_per_s == pytest.approx(1 / rate.seconds, rel=1e-2) and rate.reading_fields_per_s > 0
    assert rate.picking_over_reading == pytest.approx(rate.fields_per_s / rate.reading_fields_per_s, rel=1e-2)
