"""The simulated picker's error model and its calibration to the picker's measured error table.

The table's file round-trips and bad files give one-line errors; the default model draws what
it drew before the error table existed (against a plain re-implementation of that picker, not
stored numbers); the new failure modes do what the docstrings say; and a calibration recovers
the parameters of a table the simulated picker itself measured with chosen parameters.
"""

from __future__ import annotations

import doctest
import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from scanstream.cli import main
from scanstream.errors import InputError
from scanstream.physics import picker as physics_picker
from scanstream.physics.emulsion import ALPHA, MIP
from scanstream.physics.picker import (
    DEFAULT_PICKER,
    ERROR_TABLE_FORMAT,
    PickerModel,
    error_table,
    read_error_table,
    write_error_table,
)
from scanstream.simulate import pickercal
from scanstream.simulate.conditions import resolve_conditions
from scanstream.simulate.dataset import dataset_tables, simulate_dataset, simulate_table, write_features
from scanstream.simulate.objects import CATEGORIES, make_object
from scanstream.simulate.picker import pick_prong_directions, pick_prongs
from scanstream.simulate.pickercal import calibrate_picker, reference_alphas, simulated_errors
from scanstream.store import open_store


def test_doctests():
    for module in (physics_picker, pickercal):
        assert doctest.testmod(module).failed == 0


def reference_pick(obj, rng, m: PickerModel):
    """The simulated picker as it was before the error table (one prong at a time, same draws)."""
    k = len(obj.kinds)
    if k == 0:
        return 0, [], []
    scale = np.array([1.0, 1.0, m.shrinkage_nominal])
    seen = rng.random(k) < m.p_detect(obj.kinds) * (m.defocus_detection if obj.defocus != 0.0 else 1.0)
    towards_end, towards_start = [], []  # (closest point, far end): every segment's one way first, then the other
    for a, b, ok in zip(obj.starts, obj.ends, seen, strict=True):
        d = (b - a) * scale
        t = float(np.clip(-np.dot(a * scale, d) / max(np.dot(d, d), 1e-12), 0.0, 1.0))
        if ok and np.linalg.norm(a * scale + t * d) <= m.attach_um:
            c = a + t * (b - a)
            towards_end.append((c, b))
            towards_start.append((c, a))
    prongs = [(c, e) for c, e in towards_end + towards_start if np.linalg.norm((e - c) * scale) >= 0.5]
    if not prongs:
        return 0, [], []
    f = m.defocus_noise if obj.defocus != 0.0 else 1.0
    rel = rng.normal(0.0, m.noise_rel * f, len(prongs))
    ab = rng.normal(0.0, m.noise_abs_um * f, len(prongs))
    rows = []
    for (c, e), r, n in zip(prongs, rel, ab, strict=True):
        v = (e - c) * scale
        s = 1.0
        if abs(e[2]) > m.z_window_um and e[2] != c[2]:
            s = min(s, (np.sign(e[2] - c[2]) * m.z_window_um - c[2]) / (e[2] - c[2]))
        dxy = np.hypot(e[0] - c[0], e[1] - c[1])
        if dxy > m.follow_um:
            s = min(s, m.follow_um / dxy)
        vi = v * max(s, 0.0)
        dz = np.floor(abs(vi[2]) / m.shrinkage_nominal / m.z_step_um + 0.5) * m.z_step_um * m.shrinkage_nominal
        length = np.hypot(np.hypot(vi[0], vi[1]), dz)
        rows.append((length * (1.0 + r) + n, dz, v / np.linalg.norm(v)))
    kept = []
    for i in np.argsort([-x[0] for x in rows], kind="stable"):
        meas, _, u = rows[i]
        if meas >= m.min_length_um and all(np.dot(u, rows[j][2]) <= np.cos(np.radians(m.merge_angle_deg)) for j in kept):
            kept.append(i)
    return len(kept), [rows[i][0] for i in kept], [np.degrees(np.arcsin(np.clip(rows[i][1] / max(rows[i][0], 1e-9), 0, 1)))
                                                  for i in kept]


def sample_objects(n: int = 240, seed: int = 11):
    cond = resolve_conditions("T", seed)
    rng = np.random.default_rng(seed)
    return [make_object(CATEGORIES[i % len(CATEGORIES)], rng, cond) for i in range(n)]


@pytest.mark.parametrize("model", [DEFAULT_PICKER, replace(DEFAULT_PICKER, merge_angle_deg=20.0, p_black=0.8)],
                         ids=["default", "other"])
def test_a_model_without_the_new_failure_modes_draws_what_it_drew_before(model):
    for i, obj in enumerate(sample_objects()):
        got_rng, ref_rng = np.random.default_rng(i), np.random.default_rng(i)
        mult, lengths, dips = pick_prongs(obj, got_rng, model)
        ref_mult, ref_lengths, ref_dips = reference_pick(obj, ref_rng, model)
        assert mult == ref_mult
        np.testing.assert_allclose(lengths, np.asarray(ref_lengths, np.float32), rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(dips, np.asarray(ref_dips, np.float32), rtol=1e-5, atol=1e-3)
        assert got_rng.random() == ref_rng.random()  # the same stream consumed


def test_misdirection_changes_directions_only_and_added_prongs_come_after():
    objs = sample_objects(120)
    changed = 0
    for i, obj in enumerate(objs):
        base = pick_prong_directions(obj, np.random.default_rng(i), DEFAULT_PICKER)
        off = pick_prong_directions(obj, np.random.default_rng(i), replace(DEFAULT_PICKER, p_misdirect=0.5))
        assert base[0] == off[0] and base[1].tobytes() == off[1].tobytes() and base[2].tobytes() == off[2].tobytes()
        changed += int(not np.array_equal(base[3], off[3]))
        stubbed = pick_prong_directions(obj, np.random.default_rng(i),
                                        replace(DEFAULT_PICKER, stub_rate=1.0, stub_length_um=(3.0, 4.0)))
        assert stubbed[0] == 2 * base[0]  # every reported prong with a stub
        assert np.all(np.diff(stubbed[1]) <= 0)  # longest first
        rest = list(stubbed[1])
        for x in base[1]:
            rest.remove(x)  # the prongs as they were ...
        assert all(3.0 <= x <= 4.0 for x in rest)  # ... and a stub in the range for each
        split = pick_prong_directions(obj, np.random.default_rng(i), replace(DEFAULT_PICKER, p_split=1.0))
        assert split[0] == 2 * base[0]
    assert changed > 20


def test_split_prongs_lie_near_their_prong_and_count_as_split():
    one = make_object("alpha_th", np.random.default_rng(0), resolve_conditions("T", 0))
    obj = replace(one, starts=np.zeros((1, 3)), ends=np.array([[30.0, 0.0, 0.0]]), kinds=np.array([ALPHA], np.int8),
                  residual_end=np.zeros(1), ionisation=np.full(1, np.nan), widths=np.zeros(1), defocus=0.0)
    mult, _, _, dirs = pick_prong_directions(obj, np.random.default_rng(1), replace(DEFAULT_PICKER, p_black=1.0, p_split=1.0))
    assert mult == 2 and np.degrees(np.arccos(np.clip(dirs[0] @ dirs[1], -1, 1))) < 20.0
    beam = replace(obj, kinds=np.array([MIP], np.int8), starts=np.array([[-50.0, 0.0, 0.0]]), ends=np.array([[50.0, 0.0, 0.0]]))
    assert pick_prong_directions(beam, np.random.default_rng(1), replace(DEFAULT_PICKER, p_mip=1.0))[0] == 2


def small_table(model: PickerModel = DEFAULT_PICKER, n: int = 60, seed: int = 3) -> dict:
    return error_table({"tuning": simulated_errors(model, reference_alphas(n, seed=seed), seed=seed), "held_out": None},
                       measured={"commit": "test", "command": ["test"]})


def test_table_round_trip(tmp_path):
    table = small_table()
    path = write_error_table(tmp_path / "errors.json", table)
    back = read_error_table(path)
    assert back == json.loads(json.dumps(table))
    assert back["format"] == ERROR_TABLE_FORMAT and back["version"] == 1 and list(back["groups"]) == ["tuning"]
    assert read_error_table(back) == back
    g = back["groups"]["tuning"]
    assert g["prongs"]["true"] > 200 and g["alpha_decays"] == 60
    assert g["prongs"]["matched"] + g["prongs"]["merged"] + g["prongs"]["missed"] == g["prongs"]["true"]
    assert g["prongs"]["reported"] == g["prongs"]["matched"] + g["prongs"]["extra"] + g["prongs"]["split"]


#: Damage to a table, and what the error must name.
DAMAGE = {
    "format": (lambda t: t.update(format="something-else"), "format 'something-else'"),
    "version": (lambda t: t.update(version=2), "version 2"),
    "prong key": (lambda t: t["groups"]["tuning"]["prongs"].pop("missed_per_true_prong"),
                  "groups.tuning.prongs.missed_per_true_prong"),
    "group key": (lambda t: t["groups"]["tuning"].pop("length_error_by_true_length"),
                  "groups.tuning.length_error_by_true_length"),
    "bin key": (lambda t: t["groups"]["tuning"]["length_error_by_true_length"][2].pop("median_um"),
                "groups.tuning.length_error_by_true_length[2].median_um"),
    "no groups": (lambda t: t.pop("groups"), "lacks groups"),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_bad_table_names_the_file_and_key(tmp_path, how):
    damage, key = DAMAGE[how]
    table = json.loads(json.dumps(small_table(n=20)))
    damage(table)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    with pytest.raises(InputError) as e:
        read_error_table(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and key in msg and "\n" not in msg
    with pytest.raises(InputError):
        write_error_table(tmp_path / "out.json", table)  # nothing unreadable is written
    assert not (tmp_path / "out.json").exists()


def test_a_missing_or_unreadable_table(tmp_path):
    with pytest.raises(InputError, match="no such picker error table"):
        read_error_table(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json: not JSON"):
        read_error_table(bad)
    with pytest.raises(InputError, match="no seed group 'held_out'"):
        calibrate_picker(small_table(n=10), group="held_out")
    empty = json.loads(json.dumps(small_table(n=10)))
    empty["groups"]["tuning"]["prongs"]["true"] = 0
    with pytest.raises(InputError, match="measured no prongs"):
        calibrate_picker(empty)


def test_simulate_refuses_a_bad_table_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": ERROR_TABLE_FORMAT, "version": 1}))
    code = main(["simulate", str(tmp_path / "f.parquet"), "--objects", "5", "--alpha-fraction", "0.5", "--sheet", "P",
                 "--features-only", "--picker-errors", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and str(bad) in err and "measured" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "f.parquet").exists()


@pytest.mark.slow
def test_calibration_recovers_the_parameters_of_a_table_the_simulated_picker_measured():
    truth = replace(DEFAULT_PICKER, merge_angle_deg=18.0, p_black=0.9, p_misdirect=0.04, p_split=0.05,
                    split_length_um=(20.0, 40.0), noise_rel=0.03, noise_abs_um=1.2, length_bias_um=0.6,
                    stub_rate=0.04, stub_length_um=(4.0, 12.0))
    table = error_table({"tuning": simulated_errors(truth, reference_alphas(700, seed=5), seed=5)}, measured={})
    got = calibrate_picker(table, objects=reference_alphas(400, seed=6), seed=6)  # other decays than the table's
    assert got.merge_angle_deg == pytest.approx(18.0, abs=2.5)
    assert got.p_black == pytest.approx(0.9, abs=0.02)
    assert got.p_misdirect == pytest.approx(0.04, abs=0.015)
    assert got.p_split == pytest.approx(0.05, abs=0.015)
    assert got.stub_rate == pytest.approx(0.04, abs=0.015)
    assert got.length_bias_um == pytest.approx(0.6, abs=0.2)
    spread = [np.hypot(got.noise_abs_um, got.noise_rel * L) for L in (25.0, 45.0)]
    assert spread == pytest.approx([np.hypot(1.2, 0.03 * L) for L in (25.0, 45.0)], abs=0.25)
    assert 2.5 <= got.stub_length_um[0] < 8.0 and 8.0 < got.stub_length_um[1] <= 16.0
    assert 12.0 <= got.split_length_um[0] < 28.0 and 32.0 < got.split_length_um[1] <= 48.0
    untouched = ("p_mip", "p_grey", "p_heavy", "p_surface", "min_length_um", "attach_um", "z_window_um", "follow_um",
                 "z_step_um", "shrinkage_nominal", "defocus_detection", "defocus_noise")
    assert all(getattr(got, k) == getattr(DEFAULT_PICKER, k) for k in untouched)
    # ... and the default model's table calibrates back towards the default model
    back = calibrate_picker(small_table(n=400, seed=7), objects=reference_alphas(300, seed=8), seed=8, rounds=1)
    assert back.p_black == pytest.approx(DEFAULT_PICKER.p_black, abs=0.02)
    assert back.p_split < 0.01 and back.p_misdirect < 0.01


def test_the_simulator_measures_features_with_the_picker_it_is_given(tmp_path):
    kw = {"objects": 60, "alpha_fraction": 0.5, "sheet": "P", "seed": 2}
    default = write_features(tmp_path / "d.parquet", **kw)
    blind = replace(DEFAULT_PICKER, p_black=0.3, stub_rate=0.5)
    other = write_features(tmp_path / "o.parquet", **kw, picker=blind)
    assert default.column("object_id").to_pylist() == other.column("object_id").to_pylist()
    assert default.column("multiplicity").to_pylist() != other.column("multiplicity").to_pylist()
    assert default.equals(simulate_table(**kw, picker=DEFAULT_PICKER))
    meta = {p: json.loads(pq.read_schema(tmp_path / p).metadata[b"scanstream"]) for p in ("d.parquet", "o.parquet")}
    assert "picker" not in meta["d.parquet"] and meta["o.parquet"]["picker"]["p_black"] == 0.3
    assert PickerModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["o.parquet"]["picker"].items()}) == blind
    two = dataset_tables(scale=0.01, seed=1, splits=("test",), picker=blind)["test"]
    assert two.equals(dataset_tables(scale=0.01, seed=1, splits=("test",), workers=2, picker=blind)["test"])


@pytest.mark.slow
def test_simulate_measures_features_with_the_calibrated_picker(tmp_path, capsys):
    table = tmp_path / "t.json"
    write_error_table(table, small_table(replace(DEFAULT_PICKER, p_black=0.85, merge_angle_deg=20.0), n=300, seed=9))
    out = tmp_path / "f.parquet"
    assert main(["simulate", str(out), "--objects", "40", "--alpha-fraction", "0.5", "--sheet", "P", "--features-only",
                 "--picker-errors", str(table)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["picker"]["p_black"] == pytest.approx(0.85, abs=0.03)
    meta = json.loads(pq.read_schema(out).metadata[b"scanstream"])
    assert meta["picker"]["p_black"] == summary["picker"]["p_black"]
    assert meta["picker"]["merge_angle_deg"] == summary["picker"]["merge_angle_deg"]


def test_simulate_dataset_records_a_picker_that_is_not_the_default(tmp_path):
    blind = replace(DEFAULT_PICKER, p_black=0.3)
    paths = simulate_dataset(tmp_path / "d", scale=0.001, seed=3, picker=blind)
    source = open_store(paths["valid"]).attrs["source"]
    assert source["picker"]["p_black"] == 0.3
    assert open_store(paths["valid"]).table.column("multiplicity").to_pylist() == \
        dataset_tables(scale=0.001, seed=3, splits=("valid",), picker=blind)["valid"].column("multiplicity").to_pylist()
    assert "picker" not in open_store(simulate_dataset(tmp_path / "e", scale=0.001, seed=3)["valid"]).attrs["source"]
