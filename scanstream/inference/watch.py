"""The overnight streaming mode: classify every complete crop store that lands in an inbox.

``scanstream watch INBOX --out CANDIDATES --config overnight.toml`` polls INBOX. Each
directory in it that is a crop store with its completion marker (DESIGN.md) is classified with
the configured models and threshold (:func:`scanstream.inference.classify.classify`) into the candidate
table CANDIDATES, which grows store by store. After each store the morning summary of every
sheet it touched is rewritten (JSON + markdown): objects, selected candidates, expected true
alpha decays (selected x the calibrated precision, with its interval), time taken, crops/s.

Bookkeeping lives beside the table in ``CANDIDATES.watch/`` (the candidate directory itself
belongs to classify)::

    state.json          stores done or failed, keyed by store content hash; the store in progress
    config.json         the resolved configuration of the last watch
    lock                held (flock) while a watcher runs, so two never share a table
    morning/index.md    every sheet's summary in one page
    morning/<sheet>.json, morning/<sheet>.md

A store is processed at most once: its content hash is recorded in ``state.json`` (written
atomically) when its rows are all in the table. A watcher killed mid-store leaves the hash
unrecorded; the next start classifies that store again and classify resumes from the part
files already written (their names follow from store hash and range), so no row is lost or
duplicated. Incomplete stores (still being written) are left for a later poll.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import threading
import time
import tomllib
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from scanstream.errors import ConfigError, IncompleteStoreError, InputError, ScanstreamError, StoreError, WatchError
from scanstream.store import CropStore, is_store, open_store

logger = logging.getLogger(__name__)

STATE_VERSION = 1



@dataclass(frozen=True)
class WatchConfig:
    """How the overnight run classifies (the ``[watch]`` table of overnight.toml).

    Attributes
    ----------
    models : tuple of str
        Checkpoint files of the ensemble (score = mean logit).
    threshold : str, optional
        Threshold record calibrated for exactly these models.
    prevalence : str, optional
        Alpha fraction of the scanned sheets, e.g. ``"1:183"``: expected true alpha decays use
        the threshold's precision projected to it. Default: the precision achieved on the
        calibration store (only right when the sheets have its prevalence).
    poll_seconds : float
        Seconds between looks at the inbox.
    device, precision, batch_size, workers, scheduler, crops_per_task, processes
        Passed to :func:`scanstream.inference.classify.classify`. Without ``scheduler`` one Dask
        LocalCluster is started for the whole watch and reused for every store.
    top : int
        Candidates listed per sheet in the markdown summary.
    range_energy : bool
        Fit each sheet's density (and shrinkage) to the prong lengths of its selected candidates
        (:func:`scanstream.rangeenergy.fit_sheet`, with a background term for the false ones)
        and write it into the morning summary; a fit takes a few CPU-seconds per sheet.
    inbox, out : str, optional
        Defaults for the inbox and candidate table (the CLI arguments win).
    """

    models: tuple[str, ...] = ()
    threshold: str | None = None
    prevalence: str | None = None
    poll_seconds: float = 60.0
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    scheduler: str | None = None
    crops_per_task: int | None = None
    processes: bool = True
    top: int = 10
    range_energy: bool = False
    inbox: str | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(str(m) for m in self.models))
        if not self.models:
            raise ConfigError("watch config: 'models' must list at least one checkpoint file")
        if not (isinstance(self.poll_seconds, (int, float)) and self.poll_seconds > 0):
            raise ConfigError(f"watch config: poll_seconds must be > 0, got {self.poll_seconds!r}")
        for name in ("batch_size", "top"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"watch config: {name} must be a positive integer, got {v!r}")
        if self.prevalence is not None:
            from scanstream.inference.threshold import parse_prevalence

            try:
                parse_prevalence(self.prevalence)
            except InputError as exc:
                raise ConfigError(f"watch config: {exc}") from None

    def check_files(self) -> None:
        """Refuse missing model or threshold files before the night starts."""
        for m in self.models:
            if not Path(m).is_file():
                raise ConfigError(f"watch config: model checkpoint {m} does not exist")
        if self.threshold is not None and not Path(self.threshold).is_file():
            raise ConfigError(f"watch config: threshold record {self.threshold} does not exist")


_PATH_KEYS = ("threshold", "inbox", "out")


def load_watch_config(path: str | os.PathLike | None = None, **overrides: Any) -> WatchConfig:
    """Read the ``[watch]`` table of a TOML file (paths relative to the file), then ``overrides``.

    ``overrides`` with value None are ignored, so CLI flags that were not given keep the file's.
    """
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such config file") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{p}: not a readable TOML file: {exc}") from None
        table = doc.get("watch")
        if not isinstance(table, dict):
            raise ConfigError(f"{p}: no [watch] table")
        known = {f.name for f in fields(WatchConfig)}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"{p}: unknown key {key!r} in [watch] (known: {', '.join(sorted(known))})")
            values[key] = value
        base = p.resolve().parent
        if "models" in values:
            if not isinstance(values["models"], list):
                raise ConfigError(f"{p}: [watch] models must be a list of checkpoint paths")
            values["models"] = tuple(str(base / m) for m in values["models"])
        for key in _PATH_KEYS:
            if values.get(key) is not None:
                values[key] = str(base / values[key])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "models" in values:
        values["models"] = tuple(str(m) for m in values["models"])
    try:
        return WatchConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"watch config: {exc}") from None


# -- bookkeeping ----------------------------------------------------------------------------


def state_dir(out: str | os.PathLike) -> Path:
    """``CANDIDATES.watch`` beside the candidate table."""
    p = Path(out)
    return p.with_name(p.name + ".watch")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _write_atomic(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class WatchState:
    """``state.json``: what the watcher has done, keyed by store content hash."""

    path: Path
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> WatchState:
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            if data.get("version") != STATE_VERSION or not isinstance(data.get("stores"), dict):
                raise ValueError(f"unexpected layout (version {data.get('version')!r})")
        except (OSError, ValueError, AttributeError) as exc:
            raise WatchError(f"{path}: unreadable watch state: {exc}") from None
        return cls(path, data["stores"], data.get("current"))

    def save(self) -> None:
        body = {"version": STATE_VERSION, "stores": self.stores, "current": self.current, "updated": _now()}
        _write_atomic(json.dumps(body, indent=1, sort_keys=True) + "\n", self.path)

    def done(self, content_hash: str) -> bool:
        return content_hash in self.stores


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an flock on ``lock_path`` (released by the OS if the process dies)."""
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise WatchError(f"another watch is running on this candidate table (lock {lock_path}, pid {holder})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield


# -- the morning summary (pure + writers) -----------------------------------------------------


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
    from scanstream.inference.threshold import parse_prevalence, project_precision

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
    from scanstream import rangeenergy

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
    """Morning summary of one sheet from the state records of the stores that hold it (pure)."""
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
        f"# Morning summary: sheet {s['sheet']}", "", "| | |", "|---|---|",
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


def _sheet_file(sheet: str) -> str:
    return urllib.parse.quote(sheet, safe="") or "_"


def write_summaries(out: Path, state: WatchState, config: WatchConfig, sheets: set[str]) -> list[Path]:
    """Rewrite the morning summary of ``sheets`` (JSON + markdown) and the index page."""
    from scanstream.candidates.query import CandidateFilter, query_candidates

    threshold = _threshold_record(config)
    morning = state.path.parent / "morning"
    morning.mkdir(exist_ok=True)
    done = [r for r in state.stores.values() if r.get("status") == "done"]
    written = []
    for sheet in sorted(sheets):
        records = [r for r in done if sheet in r["sheets"]]
        if not records:
            continue
        s = sheet_summary(sheet, records, threshold=threshold, prevalence=config.prevalence)
        top = query_candidates(out, CandidateFilter(sheet=sheet, top=config.top)).to_pylist()
        s["top"] = [{k: r.get(k) for k in ("rank", "object_id", "score", "x_mm", "y_mm", "z_mm", "selected")} for r in top]
        if config.range_energy and s["selected"]:
            s["range_energy"] = sheet_range_energy(out, sheet, [r["path"] for r in records])
        name = _sheet_file(sheet)
        _write_atomic(json.dumps(s, indent=1, default=str) + "\n", morning / f"{name}.json")
        _write_atomic(summary_markdown(s, s["top"]), morning / f"{name}.md")
        written.append(morning / f"{name}.md")
    pages = []
    for f in sorted(morning.glob("*.json")):
        s = json.loads(f.read_text())
        exp = s.get("expected_true_alpha") or {}
        pages.append(
            f"| [{s['sheet']}]({f.with_suffix('.md').name}) | {s['objects']} | {_num(s.get('selected'), 'd')} | "
            f"{_num(exp.get('value'))} | {_num(s['seconds'])} | {_num(s.get('crops_per_s'))} |"
        )
    index = ["# Morning summary", "", f"Candidate table: `{out}`", "",
             "| sheet | objects | selected | expected true alpha | time (s) | crops/s |", "|---|---|---|---|---|---|",
             *pages]
    failed = [r for r in state.stores.values() if r.get("status") == "failed"]
    if failed:
        index += ["", "## Failed stores", ""] + [f"- `{r['path']}`: {r['error']}" for r in failed]
    _write_atomic("\n".join(index) + "\n", morning / "index.md")
    return written


def _threshold_record(config: WatchConfig) -> dict[str, Any] | None:
    if config.threshold is None:
        return None
    from scanstream.inference.threshold import load_threshold

    return load_threshold(config.threshold)


def store_sheet_counts(out: Path, store_path: str) -> dict[str, dict[str, int]]:
    """Objects and selected rows per sheet of one store in the candidate table (bound query)."""
    from scanstream.candidates.query import connect

    con = connect(out)
    try:
        rows = con.execute(
            "SELECT sheet, count(*), count(*) FILTER (WHERE selected) FROM candidates WHERE store = ? GROUP BY sheet",
            [store_path],
        ).fetchall()
    finally:
        con.close()
    return {str(sheet): {"objects": int(n), "selected": int(k)} for sheet, n, k in rows}


# -- the watcher ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchReport:
    """What one call of :func:`watch` did."""

    processed: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    skipped: int
    waiting: list[str]
    summaries: list[Path]
    state_dir: Path


def inbox_stores(inbox: Path) -> list[Path]:
    """Crop-store directories in ``inbox`` (complete or not), oldest first."""
    found = []
    for p in inbox.iterdir():
        if p.name.startswith(".") or not p.is_dir() or not is_store(p):
            continue
        try:
            found.append((p.stat().st_mtime, p.name, p))
        except FileNotFoundError:  # moved away meanwhile
            continue
    return [p for _, _, p in sorted(found)]


class _Watcher:
    def __init__(self, inbox: Path, out: Path, config: WatchConfig, *, progress: bool, retry_failed: bool) -> None:
        self.inbox, self.out, self.config = inbox, out, config
        self.progress, self.retry_failed = progress, retry_failed
        self.sdir = state_dir(out)
        self.state = WatchState.load(self.sdir / "state.json")
        self.scheduler = config.scheduler
        self._cluster: contextlib.ExitStack | None = None
        self.threshold = _threshold_record(config)
        from scanstream.inference.engine import checkpoint_identity

        self.model_hashes = sorted(checkpoint_identity(m) for m in config.models)

    def _ensure_cluster(self) -> None:
        """One Dask LocalCluster for the whole watch (models stay loaded on its workers)."""
        if self.scheduler is not None:
            return
        from scanstream.devices import resolve_device
        from scanstream.executor import dask_client, gpu_count

        gpus = gpu_count() if resolve_device(self.config.device).type == "cuda" else 0
        stack = contextlib.ExitStack()
        client = stack.enter_context(dask_client(None, workers=self.config.workers, gpus=gpus,
                                                 processes=self.config.processes))
        self._cluster = stack
        self.scheduler = client.scheduler.address
        logger.info("Dask cluster for the watch: %s (dashboard %s)", self.scheduler, client.dashboard_link)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def process(self, store: CropStore) -> dict[str, Any]:
        from scanstream.inference.classify import classify

        h = str(store.content_hash)
        path = str(store.path.resolve())
        self.state.current = {"hash": h, "path": path, "started": _now()}
        self.state.save()
        logger.info("classifying %s (%d crops)", store.path, store.n)
        t0 = time.perf_counter()
        record: dict[str, Any] = {"hash": h, "path": path, "name": store.path.name, "objects": store.n}
        try:
            self._ensure_cluster()
            result = classify(
                [store.path], [Path(m) for m in self.config.models], self.out,
                threshold=Path(self.config.threshold) if self.config.threshold else None,
                scheduler=self.scheduler, device=self.config.device, batch_size=self.config.batch_size,
                crops_per_task=self.config.crops_per_task, progress=self.progress, precision=self.config.precision,
            )
            if result.failed:
                raise StoreError(f"{len(result.failed)} task(s) failed: {result.failed[0]}")
        except (ScanstreamError, OSError) as exc:
            record.update({"status": "failed", "error": " ".join(str(exc).split()), "finished": _now()})
            logger.error("%s: not classified: %s", store.path, record["error"])
        else:
            sheets = store_sheet_counts(self.out, path)
            record.update(
                status="done", sheets=sheets, selected=sum(v["selected"] for v in sheets.values()),
                seconds=time.perf_counter() - t0, classify_seconds=result.seconds,
                crops_per_s=store.n / result.seconds if result.seconds > 0 else None,
                model_hashes=self.model_hashes, finished=_now(), run_id=result.run_id,
            )
        self.state.stores[h] = record
        self.state.current = None
        self.state.save()
        return record

    def poll(self) -> tuple[list[dict[str, Any]], int, list[str]]:
        """Process every new complete store in the inbox once."""
        done: list[dict[str, Any]] = []
        skipped = 0
        waiting: list[str] = []
        for p in inbox_stores(self.inbox):
            try:
                store = open_store(p)
            except IncompleteStoreError:
                waiting.append(str(p))
                logger.info("%s: incomplete, waiting for its completion marker", p)
                continue
            except (StoreError, OSError) as exc:
                logger.warning("%s: not a usable crop store, skipped: %s", p, exc)
                continue
            prior = self.state.stores.get(str(store.content_hash))
            if prior is not None and not (self.retry_failed and prior.get("status") == "failed"):
                skipped += 1
                logger.debug("%s: already %s (hash %s)", p, prior.get("status"), store.content_hash)
                continue
            record = self.process(store)
            done.append(record)
            write_summaries(self.out, self.state, self.config, set(record.get("sheets", ())))
        return done, skipped, waiting


def watch(
    inbox: str | os.PathLike,
    out: str | os.PathLike,
    config: WatchConfig,
    *,
    once: bool = False,
    poll_seconds: float | None = None,
    stop: threading.Event | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    on_store: Any = None,
) -> WatchReport:
    """Classify each complete store appearing in ``inbox`` into the candidate table ``out``.

    Parameters
    ----------
    inbox : path-like
        Directory that receives crop stores (``NAME.zarr``); others entries are ignored.
    out : path-like
        The candidate table directory (grows store by store).
    config : WatchConfig
    once : bool
        Process what is complete now, then return (cron, batch systems).
    poll_seconds : float, optional
        Overrides ``config.poll_seconds``.
    stop : threading.Event, optional
        Set it to end a continuous watch after the current store.
    retry_failed : bool
        Try stores that failed before again.
    on_store : callable, optional
        Called with each store's state record as it finishes (the CLI prints a line).

    Returns
    -------
    WatchReport

    Raises
    ------
    WatchError
        INBOX is not a directory, or another watcher holds the table.
    ConfigError
        Missing model or threshold files.
    """
    inbox, out = Path(inbox), Path(out)
    if not inbox.is_dir():
        raise WatchError(f"{inbox}: inbox is not a directory")
    if out.resolve() == inbox.resolve() or inbox.resolve() in out.resolve().parents:
        raise WatchError(f"{out}: the candidate table must not be inside the inbox {inbox}")
    config.check_files()
    if poll_seconds is not None:
        config = replace(config, poll_seconds=poll_seconds)
    stop = stop or threading.Event()
    sdir = state_dir(out)
    sdir.mkdir(parents=True, exist_ok=True)
    processed: list[dict[str, Any]] = []
    skipped = 0
    waiting: list[str] = []
    summaries: set[Path] = set()
    with _exclusive(sdir / "lock"):
        _write_atomic(json.dumps(asdict(config), indent=1) + "\n", sdir / "config.json")  # the resolved config
        w = _Watcher(inbox, out, config, progress=progress, retry_failed=retry_failed)
        if w.state.current:
            logger.warning("resuming after an interrupted run: %s was in progress", w.state.current.get("path"))
        try:
            while True:
                records, skipped, waiting = w.poll()
                for r in records:
                    processed.append(r)
                    if r["status"] == "done":
                        summaries.update(sdir / "morning" / f"{_sheet_file(s)}.md" for s in r["sheets"])
                    if on_store is not None:
                        on_store(r)
                if once or stop.wait(config.poll_seconds):
                    break
        finally:
            w.close()
    return WatchReport(
        processed=[r for r in processed if r["status"] == "done"],
        failed=[r for r in processed if r["status"] == "failed"],
        skipped=skipped,
        waiting=waiting,
        summaries=sorted(summaries),
        state_dir=sdir,
    )
