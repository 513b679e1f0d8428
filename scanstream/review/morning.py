"""The morning summary: what a night of classification found, one page per sheet.

The overnight watch (:mod:`scanstream.inference.watch`) rewrites the summary of every sheet a
finished store touched: objects classified, selected candidates, expected true alpha decays
(selected x the calibrated precision, with its interval), the time taken and crops/s, the top
candidates and, when asked, the sheet's density fitted to its candidates' prong lengths.
Each page also carries the sheet's label-free trust fields (:mod:`scanstream.trust`): the
alpha decays expected on the whole sheet from its scores alone, the selection's expected
recall, and whether the sheet has drifted from the threshold's calibration data; a drifted
sheet's page says what to do about it (:data:`DRIFT_ADVICE`).
The pieces are pure (:func:`precision_for`, :func:`sheet_summary`, :func:`summary_markdown`)
except :func:`sheet_range_energy` and :func:`write_summaries`, which read the candidate table
and write ``<sheet>.json``, ``<sheet>.md`` and ``index.md`` (atomically) into a directory.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scanstream import rangeenergy, trust
from scanstream.atomic import write_text
from scanstream.candidates.query import PARTIAL_LABEL, CandidateFilter, query_candidates
from scanstream.candidates.table import read_candidates, require_complete
from scanstream.errors import ConfigError, InputError
from scanstream.threshold import parse_prevalence, project_precision

#: The one line a drifted sheet's page adds: what to do when its threshold's recall cannot be trusted.
DRIFT_ADVICE = ("verify a few candidates in the review page's \"most useful first\" order, then recalibrate the "
                "threshold from those verdicts (`scanstream threshold`)")

#: Columns of the top candidates listed per sheet.
TOP_COLUMNS = ("rank", "object_id", "score", "x_mm", "y_mm", "z_mm", "selected")


def precision_for(record: Mapping[str, Any] | None, prevalence: str | None) -> dict[str, Any] | None:
    """The precision to expect among selected candidates, from a threshold record.

    Returns
    -------
    dict or None
        ``{"value", "ci", "source"}``: the precision achieved on the calibration store, or,
        with ``prevalence``, projected to it from the achieved recall and false-positive rate
        (interval from the ends of their intervals). None without a threshold record.
    """
    if not record:
        return None
    achieved = record.get("achieved") or {}
    if prevalence is None:
        cal = record.get("calibration_store") or {}
        src = "calibration store"
        if cal.get("alpha") is not None and cal.get("other") is not None:
            src += f" (prevalence {cal['alpha']}:{cal['other']})"
        return {"value": achieved.get("precision"), "ci": achieved.get("precision_ci"), "source": src}
    pi = parse_prevalence(prevalence)
    r, f = achieved.get("recall"), achieved.get("false_positive_rate")
    if r is None or f is None:
        raise ConfigError(f"threshold record has no achieved recall / false_positive_rate to project to {prevalence}")
    r_ci = achieved.get("recall_ci") or [r, r]
    f_ci = achieved.get("false_positive_rate_ci") or [f, f]
    return {
        "value": project_precision(r, f, pi),
        "ci": [project_precision(r_ci[0], f_ci[1], pi), project_precision(r_ci[1], f_ci[0], pi)],
        "source": f"projected to prevalence {prevalence}",
    }


def sheet_range_energy(candidates: Path, sheet: str, stores: list[str]) -> dict[str, Any]:
    """The sheet's density fitted to its selected candidates' prong lengths (or why there is none)."""
    lengths: list[np.ndarray] = []
    try:
        for store in stores:
            lengths += rangeenergy.read_sheet_lengths(candidates, sheet=sheet, store=store)[0]
        fit = rangeenergy.fit_sheet(lengths)
    except InputError as exc:
        return {"error": str(exc)}
    keep = ("density", "density_err", "shrinkage", "shrinkage_err", "background_fraction", "objects")
    return {k: fit.get(k) for k in keep}


def sheet_summary(
    sheet: str,
    records: list[Mapping[str, Any]],
    *,
    threshold: Mapping[str, Any] | None,
    prevalence: str | None,
) -> dict[str, Any]:
    """Morning summary of one sheet from the watch's records of the stores that hold it (pure)."""
    objects = sum(r["sheets"][sheet]["objects"] for r in records)
    selected = sum(r["sheets"][sheet]["selected"] for r in records)
    seconds = sum(r["seconds"] for r in records)
    classify_seconds = sum(r["classify_seconds"] for r in records)
    prec = precision_for(threshold, prevalence)
    expected = None
    if prec is not None and prec["value"] is not None:
        expected = {"value": selected * prec["value"],
                    "ci": [None if c is None else selected * c for c in prec.get("ci") or [None, None]]}
    return {
        "sheet": sheet,
        "objects": objects,
        "selected": selected if threshold else None,
        "threshold": threshold.get("threshold") if threshold else None,
        "target": threshold.get("target") if threshold else None,
        "precision": prec,
        "expected_true_alpha": expected,
        "seconds": round(seconds, 3),
        "classify_seconds": round(classify_seconds, 3),
        "crops_per_s": round(objects / classify_seconds, 2) if classify_seconds > 0 else None,
        "stores": [{"path": r["path"], "hash": r["hash"], "finished": r["finished"]} for r in records],
        "model_hashes": records[-1].get("model_hashes") if records else None,
    }


def _num(v: Any, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def summary_markdown(s: Mapping[str, Any], top: list[dict[str, Any]] | None = None) -> str:
    """The markdown page of one sheet's summary (and its top candidates)."""
    exp = s.get("expected_true_alpha")
    prec = s.get("precision")
    target = s.get("target") or {}
    lines = [
        f"# Morning summary: sheet {s['sheet']}", "",
        *([f"**{PARTIAL_LABEL}**", ""] if s.get("partial") else []),
        "| | |", "|---|---|",
        f"| objects classified | {s['objects']} |",
        f"| selected candidates | {_num(s['selected'], 'd')} |",
        f"| threshold (logit) | {_num(s['threshold'], '.3f')}"
        + (f" (target {target.get('kind')} {target.get('value')})" if target else "") + " |",
    ]
    if prec is not None:
        ci = prec.get("ci") or [None, None]
        lines.append(f"| precision used | {_num(prec['value'], '.3f')} [{_num(ci[0], '.3f')}, {_num(ci[1], '.3f')}], "
                     f"{prec['source']} |")
    if exp is not None:
        lines.append(f"| expected true alpha decays | {_num(exp['value'])} [{_num(exp['ci'][0])}, {_num(exp['ci'][1])}] |")
    lines += trust_lines(s)
    rng = s.get("range_energy")
    if rng is not None:
        lines.append(
            f"| fitted density (range-energy) | {_num(rng.get('density'), '.3f')} ± {_num(rng.get('density_err'), '.3f')} g/cm3 "
            f"from {rng.get('objects')} selected candidates |" if "error" not in rng else f"| fitted density | none: {rng['error']} |"
        )
    lines += [
        f"| time taken | {_num(s['seconds'])} s (classification {_num(s['classify_seconds'])} s) |",
        f"| crops/s | {_num(s['crops_per_s'])} |",
        f"| stores | {', '.join(Path(st['path']).name for st in s['stores'])} |",
    ]
    if top:
        lines += ["", f"## Top {len(top)} candidates", "", "| rank | object_id | score | x_mm | y_mm | z_mm | selected |",
                  "|---|---|---|---|---|---|---|"]
        for r in top:
            lines.append(
                f"| {r.get('rank')} | {r['object_id']} | {r['score']:.3f} | {r['x_mm']:.3f} | {r['y_mm']:.3f} | "
                f"{r['z_mm']:.4f} | {'yes' if r.get('selected') else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def trust_lines(s: Mapping[str, Any]) -> list[str]:
    """The summary table's rows for the sheet's trust fields (none when the summary has none)."""
    if "expected_alpha" not in s:
        return []
    why = s.get("trust_unavailable")
    if s["expected_alpha"] == "unavailable":
        return [f"| alpha decays on the sheet, from scores | unavailable: {why} |"]
    lo, hi = s["expected_alpha_interval"]
    recall = s.get("expected_recall")
    lines = [f"| alpha decays on the sheet, from scores | {_num(s['expected_alpha'])} [{_num(lo)}, {_num(hi)}] (68 %) |",
             f"| expected recall of the selection | {recall if isinstance(recall, str) else _num(recall, '.3f')} |"]
    drift = s.get("drift") or {}
    stats = drift.get("statistics") or {}
    over = ", ".join(f"{n} {stats[n]['statistic']:.3f} > {stats[n]['limit']}" for n in drift.get("over") or [])
    if drift.get("flag"):
        lines += [f"| drift | **flagged** ({over}): the threshold's recall cannot be trusted on this sheet |",
                  f"| what to do | {DRIFT_ADVICE} |"]
    else:
        lines.append("| drift | " + ("none: like the calibration data" if drift.get("flag") is False
                                     else f"not measured: {drift.get('unavailable', 'no quantity to compare')}") + " |")
    return lines


def sheet_trust(candidates: Path, sheets: Sequence[str], threshold: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The trust fields of ``sheets`` (:func:`scanstream.trust.table_trust`), the table read once
    (and not at all when the threshold record has no calibration map)."""
    usable = trust.record_trust(threshold)[0] is not None
    rows = read_candidates(candidates, columns=trust.TABLE_COLUMNS, partial=True) if usable else None
    return trust.table_trust(rows, threshold, sheets=list(sheets))


def sheet_file(sheet: str) -> str:
    """The file stem of a sheet's pages (URL-quoted, so any sheet name is one safe file name)."""
    return urllib.parse.quote(sheet, safe="") or "_"


def write_summaries(
    candidates: Path,
    morning: Path,
    stores: Mapping[str, Mapping[str, Any]],
    sheets: set[str],
    *,
    threshold: Mapping[str, Any] | None,
    prevalence: str | None = None,
    top: int = 10,
    range_energy: bool = False,
) -> list[Path]:
    """Rewrite the summary of ``sheets`` (JSON + markdown) in ``morning``, then its index page.

    Parameters
    ----------
    candidates : Path
        The candidate table the stores were classified into.
    morning : Path
        The directory of the pages (created).
    stores : mapping
        The watch's record of every store (``status`` "done" with its ``sheets`` counts, or
        "failed" with its ``error``), keyed by store content hash.
    sheets : set of str
        The sheets whose pages are rewritten (the others keep theirs).
    threshold, prevalence
        The threshold record and the sheets' prevalence (:func:`precision_for`).
    top : int
        Candidates listed per sheet.
    range_energy : bool
        Fit each sheet's density to its selected candidates (:func:`sheet_range_energy`).

    Returns
    -------
    list of Path
        The markdown pages written.
    """
    morning.mkdir(exist_ok=True)
    done = [r for r in stores.values() if r.get("status") == "done"]
    # A table without its manifest (a store failed, or the run was killed) is read, but every
    # page made from it says so: its top rows may be missing or unranked.
    partial = require_complete(candidates, allow_partial=True) is None if done else False
    written = []
    shown = [sheet for sheet in sorted(sheets) if any(sheet in r["sheets"] for r in done)]
    trusted = sheet_trust(candidates, shown, threshold) if shown else {}  # of the sheets with a page only
    for sheet in shown:
        records = [r for r in done if sheet in r["sheets"]]
        s = sheet_summary(sheet, records, threshold=threshold, prevalence=prevalence)
        rows = query_candidates(candidates, CandidateFilter(sheet=sheet, top=top), allow_partial=True).to_pylist()
        s["partial"] = partial
        s.update(trusted.get(sheet) or {})
        s["top"] = [{k: r.get(k) for k in TOP_COLUMNS} for r in rows]
        if range_energy and s["selected"]:
            s["range_energy"] = sheet_range_energy(candidates, sheet, [r["path"] for r in records])
        name = sheet_file(sheet)
        write_text(morning / f"{name}.json", json.dumps(s, indent=1, default=str) + "\n")
        write_text(morning / f"{name}.md", summary_markdown(s, s["top"]))
        written.append(morning / f"{name}.md")
    write_text(morning / "index.md", index_markdown(candidates, morning, stores))
    return written


def index_markdown(candidates: Path, morning: Path, stores: Mapping[str, Mapping[str, Any]]) -> str:
    """The index page: one line per sheet summary in ``morning``, then the stores that failed."""
    pages = []
    for f in sorted(morning.glob("*.json")):
        s = json.loads(f.read_text())
        exp = s.get("expected_true_alpha") or {}
        flag = (s.get("drift") or {}).get("flag")
        pages.append(
            f"| [{s['sheet']}]({f.with_suffix('.md').name}) | {s['objects']} | {_num(s.get('selected'), 'd')} | "
            f"{_num(exp.get('value'))} | {_num(s['seconds'])} | {_num(s.get('crops_per_s'))} | "
            f"{'n/a' if flag is None else ('**flagged**' if flag else 'none')} |"
        )
    index = ["# Morning summary", "", f"Candidate table: `{candidates}`", "",
             "| sheet | objects | selected | expected true alpha | time (s) | crops/s | drift |",
             "|---|---|---|---|---|---|---|",
             *pages]
    failed = [r for r in stores.values() if r.get("status") == "failed"]
    if failed:
        index += ["", "## Failed stores", ""] + [f"- `{r['path']}`: {r['error']}" for r in failed]
    return "\n".join(index) + "\n"
