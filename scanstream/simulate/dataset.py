"""Simulated sheets to crop stores: plans, per-object streams, parallel deterministic rendering.

An object is identified by (seed, sheet, serial); its three random streams (geometry, picker,
microscope) come from ``SeedSequence(seed, spawn_key=(sheet_key(sheet), serial)).spawn(3)``, so
the same arguments give identical stores (identical content hash) whatever the number of
workers, and the picker features do not depend on whether images are drawn.

Rendering runs on a :class:`~concurrent.futures.ProcessPoolExecutor`, the one process pool
beside the Dask executor (:mod:`scanstream.executor`): a simulated store is written by one
process on one machine, batch by batch in plan order, so a cluster's reach buys nothing and its
start costs seconds. ``python benchmarks/pools.py --objects 128 --workers 2`` on the 2-core
development machine (shared, load average about 18, best of 2): 128 objects in 4 batches of 32
took 5.8 s on this pool and 22.6 s on a Dask LocalCluster of two one-thread worker processes
given the same batches, 8.2 s of which went to starting the cluster.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scanstream.atomic import write_parquet
from scanstream.errors import InputError, StoreError, StoreExistsError
from scanstream.physics.picker import DEFAULT_PICKER, PickerModel
from scanstream.progress import as_progress
from scanstream.simulate.conditions import SheetConditions, resolve_conditions, sheet_key
from scanstream.simulate.objects import ALPHA_CATEGORIES, BACKGROUND_MIX, CATEGORIES, TH_FRACTION, make_object
from scanstream.simulate.picker import pick_prongs
from scanstream.simulate.render import render_object
from scanstream.store import CropStore, StoreWriter, is_store, open_store, rows_to_table

logger = logging.getLogger(__name__)

#: The paper's Table 1: (alpha, others) per split.
TABLE1: dict[str, tuple[int, int]] = {"train": (906, 14979), "valid": (214, 3814), "test": (255, 46693)}
BATCH = 32  # objects per worker task
SHEET_FIELD_MM = 50.0  # a scanned volume is 50 x 50 mm

TRUTH_FIELDS = [
    pa.field("truth_n_prongs", pa.int16()),
    pa.field("truth_chain", pa.string()),
    pa.field("truth_nuclides", pa.list_(pa.string())),
    pa.field("truth_particles", pa.list_(pa.string())),
    pa.field("truth_energies_mev", pa.list_(pa.float32())),
    pa.field("truth_ranges_um", pa.list_(pa.float32())),
    pa.field("truth_rn_displacement_um", pa.float32()),
    pa.field("truth_crossing_track", pa.bool_()),
    pa.field("truth_underlying", pa.string()),
    pa.field("truth_vertex_depth_um", pa.float32()),
    pa.field("truth_defocus_um", pa.float32()),
    pa.field("truth_seed", pa.int64()),
    pa.field("truth_serial", pa.int64()),
] + [pa.field(f"truth_{name}", pa.float32()) for name in SheetConditions().as_dict()]


@dataclass(frozen=True)
class ObjectPlan:
    """One object to simulate: where it goes and what it is."""

    index: int  # row in the store
    sheet: str
    serial: int  # number of the object within its sheet (object id)
    category: str
    seed: int


def _exact_counts(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` by ``weights`` into integers (largest remainder), deterministic."""
    names = list(weights)
    w = np.array([weights[k] for k in names], float)
    raw = total * w / w.sum()
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, counts.tolist(), strict=True))


def sheet_categories(n_objects: int, n_alpha: int, sheet: str, seed: int) -> list[str]:
    """Categories of a sheet's objects in scanning order: exact counts, shuffled by the seed."""
    if n_alpha > n_objects:
        raise InputError(f"{n_alpha} alpha decays do not fit in {n_objects} objects")
    n_th = round(n_alpha * TH_FRACTION)
    cats = ["alpha_th"] * n_th + ["alpha_u"] * (n_alpha - n_th)
    for name, k in _exact_counts(n_objects - n_alpha, BACKGROUND_MIX).items():
        cats += [name] * k
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), sheet_key(sheet), 1]))
    return [cats[i] for i in rng.permutation(len(cats))]


def plan_sheet(n_objects: int, alpha_fraction: float, sheet: str, seed: int) -> list[ObjectPlan]:
    """Plans for one simulated sheet of ``n_objects`` with ``round(n * alpha_fraction)`` alphas."""
    check_counts(n_objects, alpha_fraction)
    n_alpha = round(n_objects * alpha_fraction)
    cats = sheet_categories(n_objects, n_alpha, sheet, seed)
    return [ObjectPlan(i, sheet, i, c, int(seed)) for i, c in enumerate(cats)]


def check_counts(n_objects: int, alpha_fraction: float) -> None:
    """Validate an object count and an alpha fraction (InputError naming the bad value)."""
    if isinstance(n_objects, bool) or not isinstance(n_objects, (int, np.integer)) or n_objects < 0:
        raise InputError(f"object count must be a non-negative integer, got {n_objects!r}")
    if not isinstance(alpha_fraction, (int, float)) or not 0.0 <= float(alpha_fraction) <= 1.0:
        raise InputError(f"alpha fraction must lie in [0, 1], got {alpha_fraction!r}")


def object_stream(plan: ObjectPlan, stream: int) -> np.random.Generator:
    """One of the object's random streams: 0 geometry, 1 picker, 2 microscope."""
    ss = np.random.SeedSequence(plan.seed, spawn_key=(sheet_key(plan.sheet), plan.serial, stream))
    return np.random.Generator(np.random.PCG64(ss))


def _nullable(values) -> list[float | None]:
    """Floats with NaN (not measured / not defined, e.g. a beam track's energy) as null."""
    return [None if not np.isfinite(x) else float(x) for x in values]


def _row(plan: ObjectPlan, cond: dict[str, float], obj, mult: int, lengths: np.ndarray, dips: np.ndarray,
         pos: np.ndarray) -> dict[str, Any]:
    t = obj.truth
    row: dict[str, Any] = {
        "object_id": f"SIM-{plan.sheet}-{plan.serial:06d}",
        "experiment": "SIM",
        "module": 0,
        "plate": 0,
        "sheet": plan.sheet,
        "x_mm": float(pos[0]),
        "y_mm": float(pos[1]),
        "z_mm": -obj.depth / 1000.0,
        "label": obj.label,
        "category": obj.category,
        "multiplicity": mult,
        "track_lengths_um": [float(x) for x in lengths],
        "track_dips_deg": [float(x) for x in dips],
        "truth_n_prongs": int(t.get("n_prongs", 0)),
        "truth_chain": t.get("chain", ""),
        "truth_nuclides": list(t.get("nuclides", [])),
        "truth_particles": list(t.get("particles", [])),
        "truth_energies_mev": _nullable(t.get("energies_mev", [])),
        "truth_ranges_um": _nullable(t.get("ranges_um", [])),
        "truth_rn_displacement_um": t.get("rn_displacement_um"),
        "truth_crossing_track": t.get("crossing_track"),
        "truth_underlying": t.get("underlying"),
        "truth_vertex_depth_um": obj.depth,
        "truth_defocus_um": obj.defocus,
        "truth_seed": plan.seed,
        "truth_serial": plan.serial,
    }
    row.update(cond)
    return row


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Simulated object rows to the store's schema plus the truth columns (fixed types)."""
    base = rows_to_table([{k: v for k, v in r.items() if not k.startswith("truth_")} for r in rows])
    cols = {f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in TRUTH_FIELDS}
    for f in TRUTH_FIELDS:
        base = base.append_column(f, cols[f.name])
    return base


def simulate_objects(
    plans: Sequence[ObjectPlan],
    conditions: Mapping[str, SheetConditions],
    *,
    render: bool = True,
    picker: PickerModel = DEFAULT_PICKER,
) -> tuple[np.ndarray | None, pa.Table]:
    """Objects, their picker features and (``render``) their crops.

    Returns
    -------
    crops : uint8 (k, 224, 224, 3) or None
    rows : pyarrow.Table
        k object rows (standard columns plus ``truth_*``).
    """
    crops = np.empty((len(plans), 224, 224, 3), np.uint8) if render else None
    rows = []
    truth_cond = {k: {f"truth_{n}": v for n, v in c.as_dict().items()} for k, c in conditions.items()}
    for j, plan in enumerate(plans):
        cond = conditions[plan.sheet]
        g_geo = object_stream(plan, 0)
        obj = make_object(plan.category, g_geo, cond)
        pos = g_geo.uniform(0.0, SHEET_FIELD_MM, 2)
        mult, lengths, dips = pick_prongs(obj, object_stream(plan, 1), picker)
        rows.append(_row(plan, truth_cond[plan.sheet], obj, mult, lengths, dips, pos))
        if crops is not None:
            crops[j] = render_object(obj, cond, object_stream(plan, 2))
    return crops, rows_table(rows)


def _task(plans: Sequence[ObjectPlan], conditions: Mapping[str, dict], render: bool, picker: PickerModel = DEFAULT_PICKER):
    conds = {k: SheetConditions(**v) for k, v in conditions.items()}
    return simulate_objects(plans, conds, render=render, picker=picker)


def picker_source(picker: PickerModel) -> dict:
    """What a store's or table's source records of the picker model: nothing for the default one
    (so the sources of stores written before the model could change are still this code's), else
    every parameter."""
    return {} if picker == DEFAULT_PICKER else {"picker": json.loads(json.dumps(asdict(picker)))}


def iter_simulated(
    plans: Sequence[ObjectPlan],
    conditions: Mapping[str, SheetConditions],
    *,
    workers: int = 1,
    render: bool = True,
    batch: int = BATCH,
    picker: PickerModel = DEFAULT_PICKER,
) -> Iterator[tuple[np.ndarray | None, pa.Table]]:
    """Simulate ``plans`` in batches, in plan order, over ``workers`` processes (features by ``picker``)."""
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    conds = {k: v.as_dict() for k, v in conditions.items()}
    batches = [plans[i : i + batch] for i in range(0, len(plans), batch)]
    if workers == 1 or len(batches) <= 1:
        for b in batches:
            yield _task(b, conds, render, picker)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: list[Future] = []
        it = iter(batches)
        for b in it:  # keep a bounded number of batches in flight, collect in order
            pending.append(pool.submit(_task, b, conds, render, picker))
            if len(pending) >= 2 * workers + 1:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()


def map_processes(fn: Callable[..., Any], items: Sequence[Any], *, workers: int = 1, **kw: Any) -> list[Any]:
    """``[fn(item, **kw) for item in items]`` over ``workers`` processes (this package's one process pool)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(item, **kw) for item in items]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, item, **kw) for item in items]
        return [f.result() for f in futures]


def simulate_table(
    *,
    objects: int,
    alpha_fraction: float,
    sheet: str,
    seed: int,
    conditions: SheetConditions | Mapping[str, Any] | str | os.PathLike | None = None,
    workers: int = 1,
    picker: PickerModel = DEFAULT_PICKER,
) -> pa.Table:
    """The object table of a simulated sheet *without images* (picker features and truth).

    The rows are exactly those :func:`simulate_store` writes with the same arguments, at a few
    thousand objects per second: this is what calibrates the former method at full size.
    ``picker`` measures the features (e.g. one calibrated to the picker's measured errors,
    :func:`scanstream.simulate.pickercal.calibrate_picker`).
    """
    check_counts(objects, alpha_fraction)
    cond = resolve_conditions(sheet, seed, conditions=conditions)
    plans = plan_sheet(objects, alpha_fraction, sheet, seed)
    parts = [t for _, t in iter_simulated(plans, {sheet: cond}, workers=workers, render=False, batch=2048, picker=picker)]
    return pa.concat_tables(parts) if parts else rows_table([])


def _is_features_table(path: Path) -> bool:
    """Whether ``path`` is a Parquet file :func:`write_features` wrote (its ``scanstream`` metadata says so)."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return bool(json.loads(meta.get(b"scanstream", b"{}")).get("features_only"))
    except (OSError, pa.ArrowInvalid, ValueError, AttributeError):
        return False


def write_features(
    path: str | os.PathLike,
    *,
    objects: int,
    alpha_fraction: float,
    sheet: str,
    seed: int,
    conditions: SheetConditions | Mapping[str, Any] | str | os.PathLike | None = None,
    workers: int = 1,
    overwrite: bool = False,
    picker: PickerModel = DEFAULT_PICKER,
) -> pa.Table:
    """:func:`simulate_table` written atomically to a Parquet file (the object table, no images)."""
    p = Path(path)
    if p.exists() and not _is_features_table(p):
        raise StoreExistsError(f"{p}: exists and is not a features-only table written by simulate; choose another path")
    if p.exists() and not overwrite:
        raise StoreExistsError(f"{p}: exists (use --overwrite to replace it)")
    check_counts(objects, alpha_fraction)
    table = simulate_table(objects=objects, alpha_fraction=alpha_fraction, sheet=sheet, seed=seed,
                           conditions=conditions, workers=workers, picker=picker)
    meta = {"stage": "simulate", "features_only": True, "objects": int(objects), "alpha_fraction": float(alpha_fraction),
            "sheet": sheet, "seed": int(seed), **picker_source(picker)}
    table = table.replace_schema_metadata({"scanstream": json.dumps(meta)})
    write_parquet(p, table)
    return table


def write_plans(
    path: str | os.PathLike,
    plans: Sequence[ObjectPlan],
    conditions: Mapping[str, SheetConditions],
    *,
    source: Mapping[str, Any],
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    desc: str = "simulate",
    shard_crops: int | None = None,
    picker: PickerModel = DEFAULT_PICKER,
) -> CropStore:
    """Render ``plans`` into a crop store at ``path`` (resuming an interrupted identical run).

    ``shard_crops`` overrides the store's shard size (the unit of a commit; tests use small ones).
    """
    p = Path(path)
    source = dict(source)
    if p.exists() and not overwrite:
        if not is_store(p):
            raise StoreExistsError(f"{p}: exists and is not a scanstream crop store; choose another path")
        existing = open_store(p, require_complete=False)
        if existing.complete or existing.attrs.get("source") != source:
            raise StoreExistsError(f"{p}: store exists (use --overwrite to replace it)")
        logger.info("%s: resuming an interrupted simulation at object %d", p, existing.n)
    sizes = {} if shard_crops is None else {"chunk_crops": min(shard_crops, 64), "shard_crops": shard_crops}
    with StoreWriter(p, source=source, overwrite=overwrite, **sizes) as writer:
        done = writer.n
        expected = {f"SIM-{q.sheet}-{q.serial:06d}" for q in plans[:done]}
        if done and expected != writer.object_ids:
            raise StoreError(f"{p}: the committed objects are not this simulation's first {done}; use --overwrite")
        todo = plans[done:]
        bar = as_progress(progress)(len(plans), desc, "crop")
        bar.update(done)
        for crops, rows in iter_simulated(todo, conditions, workers=workers, render=True, picker=picker):
            writer.append(crops, rows)
            bar.update(rows.num_rows)
        bar.close()
    return open_store(p)


def simulate_store(
    path: str | os.PathLike,
    *,
    objects: int,
    alpha_fraction: float,
    sheet: str,
    seed: int,
    conditions: SheetConditions | Mapping[str, Any] | str | os.PathLike | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    shard_crops: int | None = None,
    picker: PickerModel = DEFAULT_PICKER,
) -> CropStore:
    """Simulate one sheet of ``objects`` vertex-like objects into a crop store.

    Parameters
    ----------
    path : path-like
        The ``NAME.zarr`` store to write.
    objects : int
        Number of objects (crops), >= 0.
    alpha_fraction : float
        Fraction of alpha decays in [0, 1]; the store holds ``round(objects * alpha_fraction)``.
    sheet : str
        Sheet name (object ids ``SIM-<sheet>-000123``; seeds the sheet's default conditions).
    seed : int
    conditions : SheetConditions, mapping of overrides, conditions file, or None
        Sheet conditions (defaults drawn from seed and sheet).
    workers : int
        Rendering processes; the store does not depend on it.
    overwrite : bool
        Replace an existing store (otherwise an existing store is an error, except an
        interrupted run of the same command, which resumes from its last commit).
    progress : bool
        Show a progress bar on stderr.
    shard_crops : int, optional
        Shard size of a new store (the unit of a commit); default the store module's.
    picker : PickerModel
        Measures the object table's features (recorded in the store's source when not the default).

    Returns
    -------
    CropStore
    """
    check_counts(objects, alpha_fraction)
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    p = Path(path)
    if p.exists() and not overwrite and is_store(p) and open_store(p, require_complete=False).complete:
        raise StoreExistsError(f"{p}: store exists (use --overwrite to replace it)")
    cond = resolve_conditions(sheet, seed, conditions=conditions)
    plans = plan_sheet(objects, alpha_fraction, sheet, seed)
    source = {
        "stage": "simulate",
        "objects": int(objects),
        "alpha_fraction": float(alpha_fraction),
        "sheet": sheet,
        "seed": int(seed),
        "conditions": {sheet: cond.as_dict()},
        **picker_source(picker),
    }
    return write_plans(p, plans, {sheet: cond}, source=source, workers=workers, overwrite=overwrite, progress=progress,
                       shard_crops=shard_crops, picker=picker)


def table1_counts(scale: float) -> dict[str, tuple[int, int]]:
    """(alpha, others) per split: the paper's Table 1 times ``scale``, at least one of each."""
    if not isinstance(scale, (int, float)) or not 0.0 < float(scale) <= 10.0:
        raise InputError(f"scale must lie in (0, 10], got {scale!r}")
    return {k: (max(1, int(np.floor(a * scale + 0.5))), max(1, int(np.floor(o * scale + 0.5)))) for k, (a, o) in TABLE1.items()}


def dataset_plans(scale: float, seed: int) -> tuple[dict[str, list[ObjectPlan]], dict[str, str]]:
    """Plans of TRAIN, VALID (one sheet pair, split 4:1 at random per class) and TEST (another sheet).

    Returns
    -------
    plans : dict split -> list of ObjectPlan (``index`` = row in that split's store)
    sheets : dict role -> sheet name
    """
    counts = table1_counts(scale)
    sheets = {"pair_a": f"S{seed}A", "pair_b": f"S{seed}B", "test": f"S{seed}T"}
    n_alpha = counts["train"][0] + counts["valid"][0]
    n_other = counts["train"][1] + counts["valid"][1]
    pool: list[ObjectPlan] = []
    for i, name in enumerate((sheets["pair_a"], sheets["pair_b"])):
        na = n_alpha // 2 + (n_alpha % 2 if i == 0 else 0)
        no = n_other // 2 + (n_other % 2 if i == 0 else 0)
        cats = sheet_categories(na + no, na, name, seed)
        pool += [ObjectPlan(-1, name, s, c, int(seed)) for s, c in enumerate(cats)]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    order = rng.permutation(len(pool))
    alphas = [pool[i] for i in order if pool[i].category in ALPHA_CATEGORIES]
    others = [pool[i] for i in order if pool[i].category not in ALPHA_CATEGORIES]
    train = alphas[: counts["train"][0]] + others[: counts["train"][1]]
    valid = alphas[counts["train"][0] :] + others[counts["train"][1] :]
    out: dict[str, list[ObjectPlan]] = {}
    for split, group in (("train", train), ("valid", valid)):
        mix = [group[i] for i in rng.permutation(len(group))]
        out[split] = [ObjectPlan(j, q.sheet, q.serial, q.category, q.seed) for j, q in enumerate(mix)]
    ta, to = counts["test"]
    cats = sheet_categories(ta + to, ta, sheets["test"], seed)
    out["test"] = [ObjectPlan(i, sheets["test"], i, c, int(seed)) for i, c in enumerate(cats)]
    return out, sheets


def simulate_dataset(
    out_dir: str | os.PathLike,
    *,
    scale: float,
    seed: int,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = False,
    conditions: Mapping[str, SheetConditions | Mapping[str, Any] | str | os.PathLike | None] | None = None,
    picker: PickerModel = DEFAULT_PICKER,
) -> dict[str, Path]:
    """TRAIN, VALID and TEST stores with the paper's Table 1 counts times ``scale``.

    TRAIN and VALID come from one pair of sheets (split 4:1 at random, as in the paper), TEST
    from a third sheet with its own conditions (about 1:183 alpha:other).

    Parameters
    ----------
    out_dir : path-like
        Gets ``train.zarr``, ``valid.zarr``, ``test.zarr``.
    scale : float
        In (0, 10]; each class count is rounded (at least 1).
    seed : int
    workers : int
    overwrite : bool
    conditions : mapping sheet-role ("pair_a", "pair_b", "test") -> overrides, optional
    picker : PickerModel
        Measures the object tables' features (recorded in the stores' sources when not the default).

    Returns
    -------
    dict split -> store path
    """
    plans, sheets = dataset_plans(scale, seed)
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    out = Path(out_dir)
    paths = {split: out / f"{split}.zarr" for split in plans}
    extra = dict(conditions or {})
    unknown = set(extra) - set(sheets)
    if unknown:
        raise InputError(f"unknown sheet roles {sorted(unknown)} (known: {', '.join(sheets)})")
    conds = {name: resolve_conditions(name, seed, conditions=extra.get(role)) for role, name in sheets.items()}
    sources = {}
    for split in plans:
        used = sorted({q.sheet for q in plans[split]})
        sources[split] = {
            "stage": "simulate-dataset",
            "split": split,
            "scale": float(scale),
            "seed": int(seed),
            "conditions": {s: conds[s].as_dict() for s in used},
            **picker_source(picker),
        }
    # A complete store from this very command is kept (an interrupted dataset run resumes with
    # the next split); anything else in the way is an error unless --overwrite.
    done = set()
    if not overwrite:
        for split, p in paths.items():
            if p.exists() and is_store(p):
                existing = open_store(p, require_complete=False)
                if existing.complete and existing.attrs.get("source") == sources[split]:
                    done.add(split)
                elif existing.complete:
                    raise StoreExistsError(f"{p}: store exists (use --overwrite to replace it)")
            elif p.exists():
                raise StoreExistsError(f"{p}: exists and is not a scanstream crop store; choose another path")
        if len(done) == len(paths):
            raise StoreExistsError(f"{out}: the dataset exists (use --overwrite to replace it)")
    for split, p in paths.items():
        if split in done:
            logger.info("%s: complete from an earlier run, kept", p)
            continue
        used = {q.sheet: conds[q.sheet] for q in plans[split]}
        write_plans(p, plans[split], used, source=sources[split], workers=workers, overwrite=overwrite,
                    progress=progress, desc=f"simulate {split}", picker=picker)
    return paths


def dataset_tables(
    *, scale: float, seed: int, workers: int = 1, splits: Sequence[str] = ("train", "valid", "test"),
    picker: PickerModel = DEFAULT_PICKER,
) -> dict[str, pa.Table]:
    """The object tables :func:`simulate_dataset` would write, *without images* (calibration), features by ``picker``."""
    plans, sheets = dataset_plans(scale, seed)
    conds = {name: resolve_conditions(name, seed) for name in sheets.values()}
    out = {}
    for split in splits:
        ps = plans[split]
        used = {q.sheet: conds[q.sheet] for q in ps}
        parts = [t for _, t in iter_simulated(ps, used, workers=workers, render=False, batch=2048, picker=picker)]
        out[split] = pa.concat_tables(parts)
    return out


def category_counts(table: pa.Table) -> dict[str, int]:
    """Objects per category (for summaries)."""
    cats = table.column("category").to_pylist()
    return {c: cats.count(c) for c in CATEGORIES if c in cats}
