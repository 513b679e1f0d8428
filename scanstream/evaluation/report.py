"""Report files: report.md (tables + linked PNG figures) and metrics.json.

Rendering is pure (dict in, markdown text out); :func:`write_report` writes both files
atomically. The paper's numbers (docs/physics.md) live here as :data:`PAPER`, so every report that
compares with the paper quotes the same values.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scanstream.atomic import write_text

#: The paper's numbers (Yoshida et al., NIM A, doi 10.1016/j.nima.2020.164930; docs/physics.md).
PAPER: dict[str, Any] = {
    "table1": {
        "TRAIN": {"alpha": 906, "other": 14979, "total": 15885},
        "VALID": {"alpha": 214, "other": 3814, "total": 4028},
        "TEST": {"alpha": 255, "other": 46693, "total": 46948},
    },
    "valid_ap": {"value": 0.980, "error": 0.002},
    "test_ap": {"value": 0.740, "error": 0.009},
    "best_setting": {"n": 2, "m": 24},
    "table2": {
        "former": {
            "candidates": {"value": 2489, "error": math.sqrt(2489)},
            "true_positives": {"value": 201, "error": math.sqrt(201)},
            "precision": {"value": 0.081, "error": 0.006},
            "recall": {"value": 0.788, "error": 0.056},
        },
        "cnn": {
            "candidates": {"value": 366, "error": 18},
            "true_positives": {"value": 201, "error": math.nan},
            "precision": {"value": 0.547, "error": 0.025},
            "recall": {"value": 0.788, "error": 0.056},
        },
        "precision_ratio": {"value": 6.8, "error": 0.6},
        "load_factor": {"value": 2489 / 366, "error": math.nan},
    },
    "best_epochs": [36, 54, 55, 65],
}


def json_ready(obj: Any) -> Any:
    """Replace NaN / inf by None and paths by strings, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return json_ready(obj.item())
    return obj


def write_report(out: str | os.PathLike, markdown: str, metrics: Mapping[str, Any], *, name: str = "report.md") -> tuple[Path, Path]:
    """Write ``out/report.md`` and ``out/metrics.json``, each atomically (:mod:`scanstream.atomic`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / name, out / "metrics.json"
    write_text(js, json.dumps(json_ready(metrics), indent=1, allow_nan=False) + "\n")
    write_text(md, markdown)
    return md, js


def pm(m: Mapping[str, float] | None, decimals: int = 3) -> str:
    """``{"value": v, "error": e}`` as ``"v ± e"`` (the error omitted when unknown)."""
    if m is None:
        return "n/a"
    v, e = m.get("value"), m.get("error")
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if e is None or (isinstance(e, float) and not math.isfinite(e)):
        return f"{v:.{decimals}f}"
    return f"{v:.{decimals}f} ± {e:.{decimals}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_T2_ROWS = (
    ("candidates to inspect", ("candidates",), 0),
    ("true alpha decays among them", ("true_positives",), 0),
    ("precision", ("precision",), 3),
    ("recall", ("recall",), 3),
)


def table2_markdown(
    t2: Mapping[str, Any],
    *,
    cnn_label: str = "CNN",
    paper: Mapping[str, Any] | None = None,
    learned: Mapping[str, Any] | None = None,
    learned_label: str = "learned former method (features only)",
) -> str:
    """The paper's Table 2 as markdown, optionally with the paper's columns beside ours.

    ``learned`` is a second Table 2 (:func:`scanstream.metrics.table2`) with the learned former
    method in its CNN column against the same cuts; it becomes a column between the former
    method and the CNN, its ratios taken against the cuts too.
    """
    header = ["", "former method", cnn_label]
    if learned is not None:
        header.insert(2, learned_label)
    if paper is not None:
        header += ["paper: former method", "paper: CNN"]
    rows = []
    for label, (key,), dec in _T2_ROWS:
        row = [label, pm(t2["former"][key], dec)]
        if learned is not None:
            row.append(pm(learned["cnn"][key], dec))
        row.append(pm(t2["cnn"][key], dec))
        if paper is not None:
            row += [pm(paper["former"][key], dec), pm(paper["cnn"][key], dec)]
        rows.append(row)
    if learned is None:
        ratio = ["precision ratio (CNN / former)", ""]
        load = ["inspection-load factor (former / CNN candidates)", ""]
    else:
        ratio = ["precision ratio (column / former)", "", pm(learned["precision_ratio"], 1)]
        load = ["inspection-load factor (former / column candidates)", "", pm(learned["load_factor"], 1)]
    ratio.append(pm(t2["precision_ratio"], 1))
    load.append(pm(t2["load_factor"], 1))
    if paper is not None:
        ratio += ["", pm(paper["precision_ratio"], 1)]
        load += ["", pm(paper["load_factor"], 1)]
    rows += [ratio, load]
    return md_table(header, rows)


def _fp_table(fps: Mapping[str, Mapping[str, int]]) -> str:
    cats = sorted({c for d in fps.values() for c in d}, key=lambda c: -sum(d.get(c, 0) for d in fps.values()))
    if not cats:
        return "No false positives.\n"
    return md_table(["category", *fps.keys()], [[c, *(d.get(c, 0) for d in fps.values())] for c in cats])


def _learned_at_former(metrics: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The learned former method's section at the former method's recall, if measured."""
    return (metrics.get("learned") or {}).get("at_former_recall")


def _learned_paired_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Object-by-object comparison of each model with the learned former method."""
    lf = _learned_at_former(metrics)
    if lf is None:
        return []
    return [
        f"Object by object ({name} against the learned former method): {p['only_learned']} non-alpha objects "
        f"only the learned former method selects, {p['only_cnn']} only the CNN, {p['both']} both; "
        f"McNemar's exact test p = {p['p_value']:.2g}.\n"
        for name, p in lf["paired"].items()
    ]


def _learned_at_threshold_line(metrics: Mapping[str, Any], name: str) -> list[str]:
    """The learned former method at the recall model ``name`` reaches at its calibrated threshold."""
    e = ((metrics.get("learned") or {}).get("at_threshold_recall") or {}).get(name)
    if e is None:
        return []
    op = e["operating_point"]
    line = (f"The {metrics['learned']['name']} at the same recall ({e['target_recall']:.3f}): {op['selected']} "
            f"candidates, precision {pm(op['precision'])}, recall {pm(op['recall'])}.\n")
    return [line]


def render_evaluation(metrics: Mapping[str, Any], *, title: str = "scanstream evaluation", level: int = 1) -> str:
    """report.md of ``scanstream evaluate`` from :func:`scanstream.evaluation.evaluate.compute_metrics` output."""
    h = "#" * level
    d = metrics["data"]
    lines = [f"{h} {title}\n"]
    lines.append(
        f"Evaluated {d['total']} labelled objects ({d['alpha']} alpha decays, {d['other']} others"
        + (f"; {d['unknown_dropped']} unlabelled objects left out" if d.get("unknown_dropped") else "")
        + f") from {', '.join(f'`{s}`' for s in d['stores'])}.\n"
    )
    lines.append(f"{h}# Average Precision\n")
    rows = [[name, f"{m['ap']:.3f}", "" if m.get("threshold") is None else f"{m['threshold']:.3f}",
             ", ".join(h_[:12] for h_ in m.get("model_hashes", [])) or "?"] for name, m in metrics["models"].items()]
    if "former" in metrics and "ap" in metrics["former"]:
        rows.append(["former method (ordered by its score)", f"{metrics['former']['ap']:.3f}", "", ""])
    if "learned" in metrics:
        rows.append([metrics["learned"]["name"], f"{metrics['learned']['ap']:.3f}", "", ""])
    lines.append(md_table(["model", "AP", "calibrated threshold (logit)", "model hashes"], rows))
    if "ap" in metrics:
        lines.append(f"Over the {len(metrics['spread_over'])} models {', '.join(metrics['spread_over'])}: "
                     f"AP {pm(metrics['ap'])} (mean ± sample std).\n")
    figs = metrics.get("figures", {})
    if "pr_curves" in figs:
        lines.append(f"![precision-recall curves]({figs['pr_curves']})\n")
    if "score_distributions" in figs:
        lines.append(f"![output distributions]({figs['score_distributions']})\n")
    if "at_former_recall" in metrics:
        s = metrics["at_former_recall"]
        lf = _learned_at_former(metrics)
        lt2 = None if lf is None else lf["table2"]
        lines.append(f"{h}# At the former method's recall ({s['target_recall']:.3f}): Table 2\n")
        lines.append(table2_markdown(s["table2"], cnn_label=s["primary"], learned=lt2))
        lines.append(
            "Errors: counts ± sqrt(N); precision and recall ± sqrt(TP) / denominator; ratios propagate "
            "relative errors in quadrature (scanstream.metrics).\n"
        )
        if "table2_models" in s:
            lines.append(f"Over the {s['table2_models']['models']} models {', '.join(metrics['spread_over'])} "
                         "(mean ± sample std):\n")
            lines.append(table2_markdown(s["table2_models"], cnn_label="models", learned=lt2))
        for name, p in s.get("paired", {}).items():
            lines.append(
                f"Object by object ({name}): {p['only_former']} non-alpha objects only the former method selects, "
                f"{p['only_cnn']} only the CNN, {p['both']} both; McNemar's exact test p = {p['p_value']:.2g} "
                "(the chance of a split at least this uneven if neither method were better).\n"
            )
        lines += _learned_paired_lines(metrics)
        fps = {"former method": metrics["former"]["false_positives"]}
        if lf is not None:
            fps[metrics["learned"]["name"]] = lf["false_positives"]
        fps.update(s["false_positives"])
        lines.append(f"{h}## False positives by category at this recall\n")
        lines.append(_fp_table(fps))
    elif "former" in metrics:
        lines.append("The former method selects no alpha decay here: no comparison at its recall.\n")
    else:
        lines.append("No former-method table given (--baseline): Table 2 not built.\n")
    if metrics.get("at_threshold"):
        lines.append(f"{h}# At the calibrated threshold\n")
        for name, e in metrics["at_threshold"].items():
            op = e["operating_point"]
            lines.append(
                f"**{name}**, threshold {op['threshold']:.3f}: {op['selected']} candidates, "
                f"{op['true_positives']} alpha decays, precision {pm(op['precision'])}, recall {pm(op['recall'])}.\n"
            )
            lines += _learned_at_threshold_line(metrics, name)
            if "table2" in e:
                lines.append(table2_markdown(e["table2"], cnn_label=f"{name} at threshold"))
            lines.append(_fp_table({"false positives": e["false_positives"]}))
    else:
        lines.append("No calibrated threshold (neither --threshold nor one in the candidate table).\n")
    return "\n".join(lines)


def _reproduction_intro(m: Mapping[str, Any]) -> list[str]:
    """Title, what was run against what, and the run time per stage."""
    cfg = m["config"]
    ds, sc = cfg["dataset"], cfg["search"]
    L = ["# Reproducing the paper on simulated sheets\n"]
    L.append(
        f"Yoshida et al., *CNN-based event classification for alpha-decay events in nuclear emulsion*, NIM A "
        f"(doi 10.1016/j.nima.2020.164930), rerun by `pipelines/reproduce_paper.py --config {cfg.get('source', '?')}` "
        f"on sheets drawn by scanstream's simulator at scale {float(ds['scale']):g} of the paper's counts (seed {ds['seed']}), "
        f"backbone {sc['backbone']} at {sc['input_size']} px (pretrained: {sc['pretrained']}), at most "
        f"{sc['max_epochs']} epoch(s), grid N {list(sc['n'])} x M {list(sc['m'])} x {sc['seeds']} seeds. "
        "Every number below was measured by this run; the paper's are quoted beside them. The paper used real "
        "E07 emulsion, ResNet50 at 224 px and the full grid; differences in scale, data and network are the "
        "first explanation of any difference.\n"
    )
    if m.get("seconds"):
        total = sum(m["seconds"].values())
        L.append("Run time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in m["seconds"].items())
                 + f"; total {total:.0f} s ({total / 60:.1f} min) wall clock"
                 + (f", {m['cpu_seconds'] / 60:.1f} min of CPU time on {m.get('cpus', '?')} cores" if m.get("cpu_seconds") else "")
                 + ".\n")
    return L


def _reproduction_data(m: Mapping[str, Any]) -> list[str]:
    """Table 1 (the data sets beside the paper's, scaled) and the former method's cuts and results."""
    scale = float(m["config"]["dataset"]["scale"])
    L = ["## Table 1: data sets\n"]
    rows = []
    for split, ours in m["table1"].items():
        p = PAPER["table1"][split]
        rows.append([split, ours["alpha"], ours["other"], ours["total"],
                     f"{p['alpha'] * scale:.0f} / {p['other'] * scale:.0f}", f"{p['alpha']} / {p['other']} / {p['total']}",
                     f"1:{ours['other'] / max(ours['alpha'], 1):.0f}"])
    L.append(md_table(["split", "alpha", "others", "total", "paper x scale (alpha / others)",
                       "paper (alpha / others / total)", "alpha:other"], rows))

    L.append("## The former method (cuts on multiplicity and prong lengths, chosen on TRAIN)\n")
    c = m["former"]["config"]
    L.append(f"Multiplicity {c['min_multiplicity']}-{c['max_multiplicity']}, every prong {c['min_length_um']}-"
             f"{c['max_length_um']} um.\n")
    rows = []
    for split, s in m["former"]["summary"].items():
        rows.append([split.upper(), s.get("selected"), s.get("true_positives"), s.get("alpha"),
                     pm(s.get("precision")), pm(s.get("recall"))])
    rows.append(["paper TEST", 2489, 201, 255, "0.081 ± 0.006", "0.788 ± 0.056"])
    L.append(md_table(["set", "selected", "alpha selected", "alpha in set", "precision", "recall"], rows))
    return L


def _reproduction_search(m: Mapping[str, Any], figs: Mapping[str, str]) -> list[str]:
    """Figure 3 (the grid search), figure 2 (loss curves) and the TEST Average Precision."""
    s = m["search"]
    best = s["best"]
    L = ["## Figure 3: the (N, M) grid search (VALID AP, mean ± std over seeds)\n"]
    if "fig3" in figs:
        L.append(f"![VALID AP over (N, M)]({figs['fig3']})\n")
    best_row = next((r for r in s["summary"] if (r["n"], r["m"]) == (best["n"], best["m"])), None)
    rows = [["best setting", f"N = {best['n']}, M = {best['m']}", f"N = {PAPER['best_setting']['n']}, M = {PAPER['best_setting']['m']}"]]
    if best_row:
        rows.append(["VALID AP at the best setting", pm({"value": best_row["val_ap_mean"], "error": best_row["val_ap_std"]}),
                     pm(PAPER["valid_ap"])])
    rows.append(["best epochs of its runs", ", ".join(str(r["best_epoch"]) for r in s["best_trials"]),
                 ", ".join(map(str, PAPER["best_epochs"]))])
    L.append(md_table(["", "this run", "paper"], rows))

    L.append("## Figure 2: loss curves of the best setting's runs\n")
    L.append(f"![loss curves]({figs['fig2']})\n" if "fig2" in figs else "No training history was found.\n")

    L.append("## TEST Average Precision\n")
    chance = {k: v["alpha"] / v["total"] for k, v in m["table1"].items() if v.get("total")}
    if chance:
        L.append("A random ordering has an AP equal to the alpha fraction: "
                 + ", ".join(f"{k} {v:.4f}" for k, v in chance.items())
                 + " here (paper: VALID 0.053, TEST 0.0054); TEST's is ten times lower than VALID's, which "
                 "alone lowers TEST AP.\n")
    t = s.get("test") or {}
    rows = [[k, f"{v:.3f}", ""] for k, v in (t.get("ap_per_model") or {}).items()]
    if t:
        rows.append(["mean ± std over the models", pm(t["ap"]), pm(PAPER["test_ap"])])
        rows.append(["ensemble (mean logit)", f"{t['ap_ensemble']:.3f}", ""])
    L.append(md_table(["model", "TEST AP", "paper"], rows))
    return L


def _reproduction_table2(ev: Mapping[str, Any]) -> list[str]:
    """Table 2 on TEST at the former method's recall, beside the paper's, and the false positives."""
    L = ["## Table 2: the CNN against the former method on TEST, at the former method's recall\n"]
    sect = ev.get("at_former_recall")
    if not sect:
        L.append("The former method selected no alpha decay on TEST: no comparison at its recall.\n")
        return L
    ens = sect["table2"]
    more = ens["cnn"]["candidates"]["value"] > ens["former"]["candidates"]["value"]
    L.append(f"Target recall {sect['target_recall']:.3f} (the former method's on this TEST set). At it the CNN "
             f"ensemble keeps the former method's {ens['former']['true_positives']['value']:.0f} true alpha decays "
             f"with {ens['cnn']['candidates']['value']:.0f} candidates instead of "
             f"{ens['former']['candidates']['value']:.0f}: {'more' if more else 'fewer'} objects to inspect "
             "than the former method (the paper: 366 instead of 2,489).\n")
    lf = _learned_at_former(ev)
    lt2 = None if lf is None else lf["table2"]
    if "table2_models" in sect:
        L.append(f"The best setting's {sect['table2_models']['models']} single models (mean ± sample std), as in the paper:\n")
        L.append(table2_markdown(sect["table2_models"], cnn_label="CNN (models)", paper=PAPER["table2"], learned=lt2))
    L.append("Their ensemble (mean logit; counts ± sqrt(N)):\n")
    L.append(table2_markdown(sect["table2"], cnn_label="CNN (ensemble)", paper=PAPER["table2"], learned=lt2))
    L.append("Errors: counts ± sqrt(N); precision and recall ± sqrt(TP) / denominator (this reproduces the "
             "paper's 0.081 ± 0.006 and 0.788 ± 0.056); ratios propagate relative errors in quadrature.\n")
    fps = {"former method": ev["former"]["false_positives"]}
    if lf is not None:
        fps[ev["learned"]["name"]] = lf["false_positives"]
    fps["CNN (ensemble)"] = sect["false_positives"]["ensemble"]
    L.append("False positives by simulated category at this recall:\n")
    L.append(_fp_table(fps))
    return L


def _reproduction_threshold(m: Mapping[str, Any]) -> list[str]:
    """The ensemble at the threshold calibrated on VALID, applied to TEST (when both are known)."""
    thr = m.get("threshold")
    at = (m["evaluation"].get("at_threshold") or {}).get("ensemble")
    if not (thr and at):
        return []
    rec = thr["record"]
    op = at["operating_point"]
    L = ["## At the calibrated threshold (chosen on VALID, applied to TEST)\n"]
    L.append(f"Threshold {rec['threshold']:.3f} (logit) at target recall {thr['target_recall']:.3f}, "
             f"{thr['source']}; on VALID it reached recall {rec['achieved']['recall']:.3f} and precision "
             f"{rec['achieved']['precision'] if rec['achieved']['precision'] is not None else float('nan'):.3f}. "
             f"On TEST: {op['selected']} candidates, {op['true_positives']} of {op['positives']} alpha decays, "
             f"precision {pm(op['precision'])}, recall {pm(op['recall'])}.\n")
    if "table2" in at:
        L.append(table2_markdown(at["table2"], cnn_label="CNN at threshold", paper=PAPER["table2"]))
    return L


def _reproduction_figures(ev: Mapping[str, Any], figs: Mapping[str, str]) -> list[str]:
    """Figures 4 and 5 (output distributions, precision-recall curves) and the AP of every curve."""
    L = ["## Figure 4: output distributions on TEST (ensemble)\n"]
    if "fig4" in figs:
        L.append(f"![output distributions]({figs['fig4']})\n")
    L.append("## Figure 5: precision-recall curves on TEST\n")
    if "fig5" in figs:
        L.append(f"![precision-recall curves]({figs['fig5']})\n")
    rows = [[k, f"{v['ap']:.3f}"] for k, v in ev["models"].items()]
    if "former" in ev and "ap" in ev["former"]:
        rows.append(["former method (ordered by its score)", f"{ev['former']['ap']:.3f}"])
    if "learned" in ev:
        rows.append([ev["learned"]["name"], f"{ev['learned']['ap']:.3f}"])
    L.append(md_table(["curve", "AP"], rows))
    return L


def render_reproduction(m: Mapping[str, Any]) -> str:
    """report.md of pipelines/reproduce_paper.py: Tables 1-2 and figures 2-5 beside the paper's numbers.

    ``m`` holds ``config``, ``table1`` (split -> class counts), ``former`` (cuts and per-split
    summary), ``search`` (best, summary, best_trials, test), ``threshold``, ``evaluation``
    (:func:`scanstream.evaluation.evaluate.compute_metrics` output), ``figures`` and ``seconds``.
    """
    figs = m.get("figures", {})
    sections = (
        _reproduction_intro(m),
        _reproduction_data(m),
        _reproduction_search(m, figs),
        _reproduction_table2(m["evaluation"]),
        _reproduction_threshold(m),
        _reproduction_figures(m["evaluation"], figs),
    )
    return "\n".join(line for section in sections for line in section)


def render_search(m: Mapping[str, Any]) -> str:
    """report.md of a grid search (:func:`scanstream.training.search.run_search`).

    ``m`` holds ``config`` (the SearchConfig as a dict: the grid and ``base``, the trials' shared
    training options), ``summary`` (mean ± std VALID AP per (N, M)), ``best``, ``figures`` and
    ``test`` (the best setting's models on TEST, or None).
    """
    cfg = m["config"]
    base = cfg["base"]
    lines = ["# RandAugment grid search\n",
             (f"Grid N {cfg['ns']} x M {cfg['ms']}, {cfg['seeds']} seeds; backbone {base['backbone']} at "
              f"{base['input_size']} px, at most {base['max_epochs']} epochs. VALID AP, mean ± sample std over seeds:\n"),
             f"![VALID AP heatmap]({m['figures']['heatmap']})\n"]
    rows = [[r["n"], r["m"], r["trials"], pm({"value": r["val_ap_mean"], "error": r["val_ap_std"]}),
             f"{r['best_epoch_mean']:.1f}"] for r in m["summary"]]
    lines.append(md_table(["N", "M", "trials", "VALID AP", "mean best epoch"], rows))
    lines.append(f"Best setting: **N = {m['best']['n']}, M = {m['best']['m']}** (highest mean VALID AP).\n")
    if m.get("test"):
        t = m["test"]
        lines.append(f"## Best setting on TEST ({t['objects']['alpha']} alpha decays, {t['objects']['other']} others)\n")
        lines.append(md_table(["model", "TEST AP"], [[k, f"{v:.3f}"] for k, v in t["ap_per_model"].items()]
                              + [["mean ± std over models", pm(t["ap"])], ["ensemble (mean logit)", f"{t['ap_ensemble']:.3f}"]]))
    return "\n".join(lines)
