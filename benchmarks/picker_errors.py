#!/usr/bin/env python
"""The picker's measured errors on simulated volumes: the table of docs/pick.md ("Measured errors").

For every seed, ``simulate-volume`` draws fields of view with truth (each stopping prong's
length, azimuth and dip included), ``ingest --format stack`` makes a volume store (both kept
in ``--work`` and reused), and the detector (:func:`scanstream.picker.detect.detect_vertices`,
as ``scanstream pick`` runs it) picks every field. The matching is
:mod:`scanstream.picker.accuracy`'s. Reported separately for the seeds the detector was tuned on
(``--tuning-seeds``) and for held-out seeds never used to choose anything (``--held-out-seeds``):

* alpha decays and the efficiency (a vertex within 2 um in x, y and 3 um in depth), with its
  binomial error;
* vertex offset of the nearest vertex (within 15 um in x, y): x, y and |depth| at the 50, 68 and
  95 % quantiles, depth signed at 16, 50 and 84 %; measured minus true multiplicity;
* prongs of the alpha decays with a vertex within 15 um: matched, merged, missed, extra (stub)
  and split prongs (within 20 degrees of a true prong but not its closest) per true prong, the
  extra and split prongs by their measured length, and the length error
  (measured minus true, undeveloped um) against the true length;
* fake vertices per field (no simulated object within 5 um in x, y and 6 um in depth), vertices
  per field, and duplicates: the fraction of picked vertices with another within 8 um (in 3-D,
  and in x, y at any depth);
* the former method's cuts (:mod:`scanstream.picker.cuts`, default configuration) on the picked
  alpha decays' measured multiplicity and prong lengths (and on the nearest vertex of every
  decay with one within 15 um, the decays the prongs are measured on): the fraction kept, beside the band the
  simulator was calibrated to with its own features (0.757-0.835; benchmarks/pick_vs_classify.py);
* the detector's seconds per field (reading excluded; this machine, its load);
* displaced radon decays (the radon moved 2 um or more, 3-D; :func:`scanstream.picker.accuracy.displaced_radon`):
  picked, with the origin reported within 2 um in x, y; origins reported on decays whose radon did
  not move and on other vertices; the first alphas' length error (``--origin-max-um 0``: without
  the second vertex, lengths from the radon's point).

Usage::

    python benchmarks/picker_errors.py --work DIR [--tuning-seeds 1,2,3] [--held-out-seeds 41,42] \\
        [--fields 4] [--objects-per-field 8] [--alpha-fraction 0.5] [--out FILE.json] [--markdown FILE.md] \\
        [--table FILE.json]

Prints one JSON document; ``--markdown`` also writes the table; ``--table`` writes the measures
on alpha decays as the versioned error table the simulated picker is calibrated to
(:func:`scanstream.physics.picker.error_table`, docs/formats.md; read by
:func:`scanstream.simulate.pickercal.calibrate_picker`).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from scanstream import atomic
from scanstream.physics.picker import error_table, write_error_table
from scanstream.picker import accuracy as acc
from scanstream.picker.cuts import DEFAULT_CONFIG, select
from scanstream.picker.detect import DetectParams
from scanstream.picker.overlap import footprints, keep_owned, neighbourhoods
from scanstream.picker.pick import detect_field
from scanstream.simulate.pickpool import simulated_volume
from scanstream.simulate.volume import VolumeSimConfig


def seed_volume(work: Path, seed: int, args: argparse.Namespace):
    """(volume store, truth rows) of ``seed``, drawn as ``scanstream simulate-volume`` draws it (sheet SIMV)
    and ingested once, kept under ``work`` as ``sim<seed>/`` and ``v<seed>.zarr``: the names
    benchmarks/end_to_end.py uses, so its volumes are read as they are."""
    cfg = VolumeSimConfig(fields=args.fields, seed=seed, objects_per_field=args.objects_per_field,
                          alpha_fraction=args.alpha_fraction, field_px=args.field_px, depth_um=args.depth_um,
                          overlap_um=args.overlap_um)
    return simulated_volume(work / f"sim{seed}", work / f"v{seed}.zarr", cfg)


def pick_seed(volume, params: DetectParams, origins: list | None = None) -> tuple[np.ndarray, list[np.ndarray], list[tuple], float]:
    """Every field's vertices: stage positions (n, 3) mm, multiplicities, prong directions (stage x, y,
    up) and lengths, and the detector's seconds (reading excluded); each vertex's second point
    (stage mm, or None) appended to ``origins`` where given."""
    pos, mult, dirs, lengths, seconds = [], [], [], [], 0.0
    near = neighbourhoods(footprints(volume))  # as scanstream pick gives each field its neighbours
    for f in volume:
        planes = f.read()
        t0 = time.perf_counter()
        found, up = detect_field(f, planes, params)
        found = keep_owned(f, found, near.get(f.name, ()))  # as scanstream pick: where fields overlap, a vertex once
        seconds += time.perf_counter() - t0
        for v in found:
            pos.append(f.pixel_to_stage(v.z, v.y, v.x))
            mult.append(v.multiplicity)
            dirs.append(np.array(v.directions, float).reshape(-1, 3) * np.array([1.0, 1.0, up]))
            lengths.append(v.track_lengths_um)
            if origins is not None:
                origins.append(None if v.origin is None else f.pixel_to_stage(*v.origin))
    return np.array(pos, float).reshape(-1, 3), np.array(mult, int), list(zip(dirs, lengths, strict=True)), seconds


def group_errors(work: Path, seeds: list[int], args: argparse.Namespace) -> dict:
    """The measures of the module docstring over the volumes of ``seeds``."""
    matches, tally = [], acc.ProngTally()
    fields = picked_n = fakes = dups = dups_xy = cut_kept = cut_kept_found = 0
    seconds, radon = 0.0, []
    for seed in seeds:
        volume, truth = seed_volume(work, seed, args)
        origins: list = []
        pos, mult, prongs, sec = pick_seed(volume, DetectParams(star_um=args.star_um, origin_max_um=args.origin_max_um), origins)
        radon.append(acc.displaced_radon(pos, origins, prongs, truth))
        seconds += sec
        fields += len(volume)
        picked_n += len(pos)
        fakes += int(acc.fake_vertices(pos, truth).sum())
        dups += int(acc.duplicates(pos).sum())
        dups_xy += int(acc.duplicates(pos, in_3d=False).sum())
        decays = [r for r in truth if r["label"] == 1]
        found = acc.decay_matches(pos, mult, truth)
        matches += found
        kept = select(mult, [np.asarray(lengths, float) for _, lengths in prongs], DEFAULT_CONFIG)[0] if len(pos) else []
        cut_kept += sum(bool(kept[m["index"]]) for m in found if m["picked"])
        cut_kept_found += sum(bool(kept[m["index"]]) for m in found if m["found"])
        for r, m in zip(decays, found, strict=True):
            if not m["found"]:
                continue
            d, lengths = prongs[m["index"]]
            tally.add(d, lengths, acc.true_directions(r), r["prong_lengths_um"])
    n = len(matches)
    k = sum(m["picked"] for m in matches)
    eff = k / n if n else float("nan")
    dz = [m["dz_um"] for m in matches if m["found"]]
    return {
        "seeds": seeds, "fields": fields, "alpha_decays": n, "alpha_picked": k,
        "efficiency": round(eff, 4) if n else None,
        "efficiency_error": round(math.sqrt(eff * (1 - eff) / n), 4) if n else None,
        **acc.error_summary(matches, fakes=fakes, fields=fields),
        "vertex_offset_z_um_q16_50_84": [round(float(x), 2) for x in np.quantile(dz, (0.16, 0.5, 0.84))] if dz else None,
        **tally.measures(),
        "cuts_kept_of_picked_alpha": round(cut_kept / k, 4) if k else None,
        "cuts_kept_of_found_alpha": round(cut_kept_found / len(dz), 4) if dz else None,
        "vertices": picked_n, "vertices_per_field": round(picked_n / fields, 3) if fields else None,
        "duplicates": dups, "duplicate_fraction": round(dups / picked_n, 4) if picked_n else None,
        "duplicates_xy": dups_xy, "duplicate_xy_fraction": round(dups_xy / picked_n, 4) if picked_n else None,
        "detect_seconds_per_field": round(seconds / fields, 3) if fields else None,
        "displaced_radon": radon_summary(radon, fields),
    }


def radon_summary(per_volume: list[dict], fields: int) -> dict:
    """:func:`scanstream.picker.accuracy.displaced_radon`'s counts summed over volumes, with the fraction
    of picked displaced decays whose origin is reported within 2 um, origins per field on vertices
    that are no picked decay's, and the first alphas' length errors (median, 16 and 84 %)."""
    out = {k: sum(d[k] for d in per_volume) for k in per_volume[0] if k != "first_alpha_errors_um"} if per_volume else {}
    errors = [e for d in per_volume for e in d["first_alpha_errors_um"]]
    k = out.get("displaced_picked", 0)
    return {**out, "origin_within_fraction": round(out["origin_within"] / k, 4) if k else None,
            "other_with_origin_per_field": round(out["other_with_origin"] / fields, 3) if fields and out else None,
            "first_alpha_length_error_um_q50_16_84": [round(float(x), 2) for x in np.quantile(errors, (0.5, 0.16, 0.84))]
            if errors else None, "first_alpha_prongs": len(errors)}


def _q(v) -> str:
    return "-" if v is None else " / ".join(f"{x:g}" for x in v)


def markdown(doc: dict) -> str:
    """The table of docs/pick.md: one column per seed group."""
    groups = [g for g in ("tuning", "held_out") if doc.get(g)]
    head = "| measure | " + " | ".join(f"{g.replace('_', '-')} seeds {','.join(map(str, doc[g]['seeds']))}" for g in groups) + " |"
    rows = [head, "|---|" + "---|" * len(groups)]

    def row(name: str, fn) -> None:
        rows.append(f"| {name} | " + " | ".join(fn(doc[g]) for g in groups) + " |")

    row("fields; alpha decays", lambda g: f"{g['fields']}; {g['alpha_decays']}")
    row("efficiency (2 um x-y, 3 um depth)", lambda g: f"{g['alpha_picked']} of {g['alpha_decays']}: "
        f"{g['efficiency']:.3f} +- {g['efficiency_error']:.3f}" if g["alpha_decays"] else "-")
    row("vertex offset x-y, um (q50 / q68 / q95)", lambda g: _q(g["vertex_offset_xy_um_q50_68_95"]))
    row("vertex offset depth, um (q16 / q50 / q84)", lambda g: _q(g["vertex_offset_z_um_q16_50_84"]))
    row("multiplicity measured - true (decays)", lambda g: ", ".join(
        f"{k}: {v}" for k, v in g["multiplicity_measured_minus_true"].items()) or "-")
    row("prongs matched / merged / missed / extra, per true prong", lambda g: " / ".join(
        f"{g['prongs'][k + '_per_true_prong']:.3f}" for k in ("matched", "merged", "missed", "extra"))
        + f" (of {g['prongs']['true']})")
    for b in doc[groups[0]]["length_error_by_true_length"] if groups else []:
        lo, hi = b["true_um"]

        def cell(g, lo=lo):
            e = next(x for x in g["length_error_by_true_length"] if x["true_um"][0] == lo)
            return "-" if not e["prongs"] else f"{e['median_um']:+.2f} ({_q(e['q16_q84_um'])}), {e['prongs']} prongs"

        row(f"length error, true {lo:g}-{hi:g} um: median (q16 / q84)", cell)
    row("former method's cuts: kept of the picked alpha decays (calibrated band 0.757-0.835)",
        lambda g: f"{g['cuts_kept_of_picked_alpha']}")
    row("fake vertices per field", lambda g: f"{g['fake_vertices_per_field']}")
    row("extra vertices within 15 um per alpha decay", lambda g: f"{g['extra_vertices_per_alpha_decay']}")
    row("vertices with another within 8 um (duplicates)", lambda g: f"{g['duplicates']} of {g['vertices']}: "
        f"{g['duplicate_fraction']}")
    row("vertices with another within 8 um in x-y, any depth", lambda g: f"{g['duplicates_xy']} of {g['vertices']}: "
        f"{g['duplicate_xy_fraction']}")
    row("detector seconds per field", lambda g: f"{g['detect_seconds_per_field']}")
    row("displaced radon (moved >= 2 um, 3-D): picked; origin within 2 um x-y / elsewhere", lambda g: (
        "{displaced_picked} of {displaced}; {origin_within} / {origin_elsewhere}".format(**g["displaced_radon"])))
    row("origins on picked decays whose radon did not move; on other vertices (per field)", lambda g: (
        "{unmoved_with_origin} of {unmoved_picked}; {other_with_origin} of {other_vertices} "
        "({other_with_origin_per_field})".format(**g["displaced_radon"])))
    def first_alphas(g) -> str:
        q = g["displaced_radon"]["first_alpha_length_error_um_q50_16_84"]
        return ("-" if q is None else f"{q[0]:+.2f} ({_q(q[1:])})") + f", {g['displaced_radon']['first_alpha_prongs']} prongs"

    row("first alphas' length error in displaced decays, um: median (q16 / q84)", first_alphas)
    return "\n".join(rows) + "\n"


def _seeds(p: argparse.ArgumentParser, text: str, flag: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        p.error(f"{flag} {text!r}: expected integers separated by commas")
        raise  # p.error exits


def measured_on(args: argparse.Namespace, argv: list[str] | None, doc: dict) -> dict:
    """How the error table was measured: the repository's commit (and whether files differed from
    it), the command's arguments, the volumes drawn and the star merge distance."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                                    text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"commit": commit, "uncommitted_changes": dirty, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": ["benchmarks/picker_errors.py", *(sys.argv[1:] if argv is None else argv)],
            "volumes": doc["volumes"], "star_um": doc["star_um"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="keeps the simulated volumes and their stores (reused)")
    p.add_argument("--tuning-seeds", default="1,2,3,4,5,6", help="seeds the detector was tuned on")
    p.add_argument("--held-out-seeds", default="", help="seeds never used to choose anything")
    p.add_argument("--fields", type=int, default=4, help="fields per volume")
    p.add_argument("--objects-per-field", type=int, default=8)
    p.add_argument("--alpha-fraction", type=float, default=0.5)
    p.add_argument("--field-px", type=int, default=1024)
    p.add_argument("--depth-um", type=float, default=None, help="image a thinner slab (tests)")
    p.add_argument("--overlap-um", type=float, default=None,
                   help="draw the volumes with fields overlapping by this much (simulate-volume --overlap-um; "
                   "use a --work of its own)")
    p.add_argument("--star-um", type=float, default=DetectParams.star_um,
                   help=f"criterion 8's merge distance (0: no merge; default {DetectParams.star_um})")
    p.add_argument("--origin-max-um", type=float, default=DetectParams.origin_max_um,
                   help=f"how far a displaced radon's origin is looked for (0: not; default {DetectParams.origin_max_um})")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    p.add_argument("--markdown", type=Path, help="write the markdown table here")
    p.add_argument("--table", type=Path, help="write the error table the simulated picker is calibrated to here "
                   "(format scanstream.picker-errors, docs/formats.md)")
    args = p.parse_args(argv)
    groups = {"tuning": _seeds(p, args.tuning_seeds, "--tuning-seeds"),
              "held_out": _seeds(p, args.held_out_seeds, "--held-out-seeds")}
    if set(groups["tuning"]) & set(groups["held_out"]):
        p.error(f"a seed is both tuning and held out: {sorted(set(groups['tuning']) & set(groups['held_out']))}")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    doc = {"star_um": args.star_um, "volumes": {"fields": args.fields, "objects_per_field": args.objects_per_field,
                       "alpha_fraction": args.alpha_fraction, "field_px": args.field_px, "overlap_um": args.overlap_um}}
    for name, seeds in groups.items():
        doc[name] = group_errors(args.work, seeds, args) if seeds else None
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(doc, indent=1)
    if args.out:
        atomic.write_text(args.out, text + "\n")
    if args.markdown:
        atomic.write_text(args.markdown, markdown(doc))
    if args.table:
        write_error_table(args.table, error_table({g: doc[g] for g in groups}, measured=measured_on(args, argv, doc)))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
