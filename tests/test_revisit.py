"""scanstream.candidates.revisit: short stage paths over the selected candidates of each plate."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from scanstream.candidates.revisit import (
    REVISIT_COLUMNS,
    nearest_neighbour_order,
    path_length,
    plan_path,
    revisit_table,
    two_opt,
)
from scanstream.errors import InputError


def slow_path_length(xy, order):
    total = 0.0
    for a, b in itertools.pairwise(order):
        total += ((xy[a][0] - xy[b][0]) ** 2 + (xy[a][1] - xy[b][1]) ** 2) ** 0.5
    return total


def brute_force_best(xy):
    n = len(xy)
    return min(slow_path_length(xy, p) for p in itertools.permutations(range(n)))


def is_permutation(order, n):
    return sorted(np.asarray(order).tolist()) == list(range(n))


@pytest.mark.parametrize("seed", range(5))
def test_path_length_matches_reference(seed):
    xy = np.random.default_rng(seed).uniform(0, 50, (20, 2))
    order = np.random.default_rng(seed + 10).permutation(20)
    assert path_length(xy, order) == pytest.approx(slow_path_length(xy.tolist(), order.tolist()))


def test_nearest_neighbour_is_greedy():
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    assert nearest_neighbour_order(xy, start=0).tolist() == [0, 2, 3, 1]


def slow_nearest_neighbour(xy, start):
    left = set(range(len(xy))) - {start}
    order = [start]
    while left:
        cur = order[-1]
        nxt = min(left, key=lambda j: ((xy[j][0] - xy[cur][0]) ** 2 + (xy[j][1] - xy[cur][1]) ** 2, j))
        order.append(nxt)
        left.remove(nxt)
    return order


@pytest.mark.parametrize("seed", range(3))
def test_nearest_neighbour_matches_reference(seed):
    # 150 points: the greedy walk often finds all 16 nearest points visited (the fallback search)
    xy = np.random.default_rng(seed).uniform(0, 10, (150, 2))
    assert nearest_neighbour_order(xy, start=seed).tolist() == slow_nearest_neighbour(xy.tolist(), seed)


def test_two_opt_untangles_a_crossing():
    # a Z-shaped path whose middle step crosses itself; the straight line is optimal
    xy = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    order = two_opt(xy, [0, 1, 2, 3])
    assert path_length(xy, order) == pytest.approx(3.0)


@pytest.mark.parametrize("seed", range(6))
def test_plan_path_is_two_opt_optimal_on_small_sets(seed):
    xy = np.random.default_rng(seed).uniform(0, 50, (7, 2))
    order = plan_path(xy)
    assert is_permutation(order, 7)
    length = path_length(xy, order)
    # no single segment reversal shortens it (checked exhaustively) ...
    for i in range(7):
        for j in range(i + 1, 7):
            p = order.copy()
            p[i : j + 1] = p[i : j + 1][::-1]
            assert path_length(xy, p) >= length - 1e-9
    # ... and on 7 points that local optimum is close to the brute-force best
    assert length <= 1.25 * brute_force_best(xy.tolist()) + 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_plan_path_never_longer_than_given_order(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 300))
    xy = rng.uniform(0, 120, (n, 2))
    # also a given order that is already good: points sorted along a serpentine
    for given in (xy, xy[np.lexsort((xy[:, 1], np.floor(xy[:, 0] / 10)))]):
        order = plan_path(given)
        assert is_permutation(order, n)
        assert path_length(given, order) <= path_length(given) + 1e-9


def test_plan_path_much_shorter_than_random_order():
    xy = np.random.default_rng(3).uniform(0, 100, (400, 2))
    assert path_length(xy, plan_path(xy)) < 0.25 * path_length(xy)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_inputs(n):
    xy = np.arange(2 * n, dtype=float).reshape(n, 2)
    assert plan_path(xy).tolist() == list(range(n))


def test_bad_positions():
    with pytest.raises(InputError, match="shape"):
        plan_path(np.zeros((4, 3)))
    with pytest.raises(InputError, match="not finite"):
        plan_path(np.array([[0.0, 0.0], [np.nan, 1.0], [2.0, 2.0]]))
    with pytest.raises(InputError, match="permutation"):
        two_opt(np.zeros((3, 2)), [0, 0, 1])
    with pytest.raises(InputError, match="start"):
        nearest_neighbour_order(np.zeros((3, 2)), start=5)


def candidate_rows(seed=0, n=200):
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "object_id": [f"o{i:04d}" for i in range(n)],
            "sheet": rng.choice(["S1", "S2"], n).tolist(),
            "plate": rng.choice([9, 10], n).astype(np.int32),
            "x_mm": rng.uniform(0, 100, n),
            "y_mm": rng.uniform(0, 100, n),
            "z_mm": rng.uniform(-0.5, 0, n),
            "selected": rng.random(n) < 0.4,
        }
    )


def test_revisit_table_visits_each_selected_once_per_plate():
    t = candidate_rows()
    out = revisit_table(t)
    assert tuple(out.column_names) == REVISIT_COLUMNS
    selected = [r for r in t.to_pylist() if r["selected"]]
    assert sorted(out.column("object_id").to_pylist()) == sorted(r["object_id"] for r in selected)
    by_id = {r["object_id"]: r for r in selected}
    rows = out.to_pylist()
    for r in rows:  # positions copied faithfully
        src = by_id[r["object_id"]]
        assert (r["sheet"], r["plate"], r["x_mm"], r["y_mm"], r["z_mm"]) == (
            src["sheet"], src["plate"], src["x_mm"], src["y_mm"], src["z_mm"]
        )
    for key in {(r["sheet"], r["plate"]) for r in selected}:
        plate_rows = [r for r in rows if (r["sheet"], r["plate"]) == key]
        assert [r["visit"] for r in plate_rows] == list(range(1, len(plate_rows) + 1))
        ours = sum(r["step_mm"] for r in plate_rows)
        xy = [(r["x_mm"], r["y_mm"]) for r in plate_rows]
        assert ours == pytest.approx(slow_path_length(xy, list(range(len(xy)))))
        naive = [(r["x_mm"], r["y_mm"]) for r in selected if (r["sheet"], r["plate"]) == key]
        assert ours <= slow_path_length(naive, list(range(len(naive)))) + 1e-9
        assert plate_rows[0]["step_mm"] == 0.0
    # plates are contiguous blocks
    keys = [(r["sheet"], r["plate"]) for r in rows]
    assert len([k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]) == len(set(keys))


def test_revisit_table_missing_columns():
    with pytest.raises(InputError, match="x_mm"):
        revisit_table(candidate_rows().drop(["x_mm"]))


def test_revisit_table_null_selected_is_not_selected():
    t = candidate_rows(n=10)
    t = t.set_column(t.column_names.index("selected"), "selected", pa.array([None] * 5 + [True] * 5, pa.bool_()))
    assert revisit_table(t).num_rows == 5
