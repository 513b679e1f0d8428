"""benchmarks/crop_information.py on a few hundred objects: it runs and reports what it promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures import load_script


@pytest.fixture(scope="module")
def ci():
    return load_script("benchmarks/crop_information.py")


@pytest.mark.slow
def test_core_function_reports_every_feature_set(ci):
    res = ci.run(train_objects=300, train_alpha_fraction=0.2, test_objects=300, test_alpha_fraction=0.1, seed=3,
                 bootstrap=3, pickers=False, max_iter=20)
    json.dumps(res)  # JSON-able
    assert set(res) >= {"config", "sheets", "former_cuts_on_test", "feature_sets", "picker_variants",
                        "ap_differences_bootstrap", "test_alpha_prongs_seen_whole", "cpu_s"}
    assert set(res["feature_sets"]) == set(ci.FEATURE_SETS)
    assert res["sheets"]["test"]["objects"] == 300 and res["sheets"]["test"]["alpha"] == 30
    for v in res["feature_sets"].values():
        assert 0.0 <= v["ap"] <= 1.0 and v["n_features"] > 0 and "ap_bootstrap_sd" in v
        if res["former_cuts_on_test"]["recall"]:
            assert v["true_positives"] >= res["former_cuts_on_test"]["true_positives"]
    assert set(res["test_alpha_prongs_seen_whole"]) == set(ci.PLANE_SETS)


def test_more_planes_never_see_less(ci):
    """A wider plane set sees every prong at least as long in focus as the crop's three planes."""
    from scanstream.simulate.dataset import make_object, object_stream, plan_sheet, resolve_conditions

    cond = resolve_conditions("T", 0)
    col = [ci.CROP_COLUMNS.index(f"p{j}_len_focus") for j in range(ci.N_PRONGS)]
    for plan in plan_sheet(60, 0.5, "T", 0):
        geo = ci.Geometry(make_object(plan.category, object_stream(plan, 0), cond), cond)
        f = {k: geo.features(v, 0.0, 2.0, 6.0) for k, v in ci.PLANE_SETS.items()}
        assert f["3"][col].sum() <= f["7"][col].sum() + 1e-9 <= f["15"][col].sum() + 2e-9
        assert len(f["3"]) == len(ci.CROP_COLUMNS)
        assert np.all(f["3"][ci.CROP_COLUMNS.index("n_contained")] <= f["15"][ci.CROP_COLUMNS.index("n_contained")])
