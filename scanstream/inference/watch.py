"""The overnight streaming mode: classify every complete crop store that lands in an inbox.

``scanstream watch INBOX --out CANDIDATES --config overnight.toml`` polls INBOX. Each
directory in it that is a crop store with its completion marker (docs/store.md) is classified with
the configured models and threshold (:func:`scanstream.inference.classify.classify`) into the candidate
table CANDIDATES, which grows store by store. After each store the morning summary of every
sheet it touched is rewritten (JSON + markdown, :mod:`scanstream.review.morning`): objects,
selected candidates, expected true alpha decays (selected x the calibrated precision, with its
interval), time taken, crops/s.

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
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from scanstream.atomic import write_json
from scanstream.candidates import table as cand
from scanstream.config import check_keys, from_dict, read_toml
from scanstream.devices import resolve_device
from scanstream.errors import ConfigError, IncompleteStoreError, InputError, ScanstreamError, StoreError, WatchError
from scanstream.executor import dask_client, gpu_count
from scanstream.inference.classify import classify
from scanstream.inference.engine import checkpoint_identity
from scanstream.picker.pick import pick_volume
from scanstream.review.morning import sheet_file, write_summaries
from scanstream.store import CropStore, is_store, is_volume, open_store, open_volume
from scanstream.threshold import load_threshold, parse_prevalence

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
    Errors name the file and the key (:mod:`scanstream.config`).
    """
    values = {} if path is None else _read_watch_table(Path(path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "models" in values:
        values["models"] = tuple(str(m) for m in values["models"])
    return from_dict(WatchConfig, values, where="watch config")


def _read_watch_table(p: Path) -> dict[str, Any]:
    """The ``[watch]`` table of ``p``, its paths resolved against the file's directory."""
    if not p.exists():
        raise ConfigError(f"{p}: no such config file")
    values = read_toml(p, section="watch")
    check_keys(values, (f.name for f in fields(WatchConfig)), f"{p} [watch]")
    base = p.resolve().parent
    if "models" in values:
        if not isinstance(values["models"], list):
            raise ConfigError(f"{p}: [watch] models must be a list of checkpoint paths")
        values["models"] = tuple(str(base / m) for m in values["models"])
    for key in _PATH_KEYS:
        if values.get(key) is not None:
            values[key] = str(base / values[key])
    return values


# -- bookkeeping ----------------------------------------------------------------------------


def state_dir(out: str | os.PathLike) -> Path:
    """``CANDIDATES.watch`` beside the candidate table."""
    p = Path(out)
    return p.with_name(p.name + ".watch")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


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
        write_json(self.path, body)

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


def _threshold_record(config: WatchConfig) -> dict[str, Any] | None:
    if config.threshold is None:
        return None
    return load_threshold(config.threshold)


@dataclass(frozen=True)
class WatchReport:
    """What one call of :func:`watch` did."""

    processed: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    skipped: int
    waiting: list[str]
    summaries: list[Path]
    state_dir: Path


# -- the watcher ----------------------------------------------------------------------------
def inbox_stores(inbox: Path, *, kind: Callable[[Path], bool] = is_store) -> list[Path]:
    """Crop-store directories in ``inbox`` (complete or not; ``kind=is_volume``: volumes), oldest first."""
    found = []
    for p in inbox.iterdir():
        if p.name.startswith(".") or not p.is_dir() or not kind(p):
            continue
        try:
            found.append((p.stat().st_mtime, p.name, p))
        except FileNotFoundError:  # moved away meanwhile
            continue
    return [p for _, _, p in sorted(found)]


def _stamp(store: Path) -> str | None:
    """The store's group metadata file's size and mtime: a store recorded with the same stamp is not reopened."""
    try:
        st = (store / "zarr.json").stat()
    except OSError:
        return None
    return f"{st.st_size}-{st.st_mtime_ns}"


class _Watcher:
    def __init__(self, inbox: Path, out: Path, config: WatchConfig, *, progress: bool, retry_failed: bool) -> None:
        self.inbox, self.out, self.config = inbox, out, config
        self.progress, self.retry_failed = progress, retry_failed
        self.sdir = state_dir(out)
        self.morning = self.sdir / "morning"
        self.state = WatchState.load(self.sdir / "state.json")
        self.scheduler = config.scheduler
        self._cluster: contextlib.ExitStack | None = None
        self.threshold = _threshold_record(config)
        self.model_hashes = sorted(checkpoint_identity(m) for m in config.models)

    def _ensure_cluster(self) -> None:
        """One Dask LocalCluster for the whole watch (models stay loaded on its workers)."""
        if self.scheduler is not None:
            return
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
        """Classify one store into the table and record it in the state (done or failed)."""
        h = str(store.content_hash)
        path = str(store.path.resolve())
        self.state.current = {"hash": h, "path": path, "started": _now()}
        self.state.save()
        logger.info("classifying %s (%d crops)", store.path, store.n)
        t0 = time.perf_counter()
        record: dict[str, Any] = {"hash": h, "path": path, "name": store.path.name, "objects": store.n,
                                  "stamp": _stamp(store.path)}
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
            sheets = cand.store_counts(self.out, h)  # this store's parts only: no cost per store already done
            record.update(
                status="done", sheets=sheets, selected=sum(v["selected"] for v in sheets.values()),
                seconds=time.perf_counter() - t0, classify_seconds=result.seconds,
                task_seconds=sum(result.task_seconds),
                crops_per_s=store.n / result.seconds if result.seconds > 0 else None,
                model_hashes=self.model_hashes, finished=_now(), run_id=result.run_id,
            )
        self.state.stores[h] = record
        self.state.current = None
        self.state.save()
        return record

    def picked_stores(self, waiting: list[str]) -> list[Path]:
        """Crop stores picked from the inbox's complete volumes (z-stacks ingested), each picked once.

        The picked store is kept in the watch's state folder (``picked/NAME``), never in the
        inbox; an interrupted pick resumes on the next poll. An incomplete volume waits.
        """
        out = []
        for vol in inbox_stores(self.inbox, kind=is_volume):
            dest = self.sdir / "picked" / vol.name
            if not (is_store(dest) and open_store(dest, require_complete=False).complete):
                try:
                    open_volume(vol)
                except StoreError as exc:
                    waiting.append(str(vol))
                    logger.info("%s: not ready to pick: %s", vol, exc)
                    continue
                self._ensure_cluster()
                logger.info("picking vertices of %s into %s", vol, dest)
                pick_volume(vol, dest, scheduler=self.scheduler, progress=self.progress)
            out.append(dest)
        return out

    def poll(self) -> tuple[list[dict[str, Any]], int, list[str]]:
        """Process every new complete store in the inbox once (volumes are picked into stores first)."""
        done: list[dict[str, Any]] = []
        skipped = 0
        waiting: list[str] = []
        known = {(r.get("path"), r.get("stamp")): r for r in self.state.stores.values() if r.get("stamp")}
        for p in [*inbox_stores(self.inbox), *self.picked_stores(waiting)]:
            prior = known.get((str(p.resolve()), _stamp(p)))
            if prior is not None and not (self.retry_failed and prior.get("status") == "failed"):
                skipped += 1  # recorded, and its metadata unchanged since: no need to open it again
                continue
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
            self.rewrite_summaries(set(record.get("sheets", ())))
        return done, skipped, waiting

    def rewrite_summaries(self, sheets: set[str]) -> list[Path]:
        """Rewrite the morning summary of ``sheets`` and the index page."""
        c = self.config
        return write_summaries(self.out, self.morning, self.state.stores, sheets, threshold=_threshold_record(c),
                               prevalence=c.prevalence, top=c.top, range_energy=c.range_energy)

    def loop(self, *, once: bool, stop: threading.Event, on_store: Callable[[dict], Any] | None) -> WatchReport:
        """Poll the inbox until ``once`` has run or ``stop`` is set; what was done."""
        processed: list[dict[str, Any]] = []
        summaries: set[Path] = set()
        while True:
            records, skipped, waiting = self.poll()
            for r in records:
                processed.append(r)
                if r["status"] == "done":
                    summaries.update(self.morning / f"{sheet_file(s)}.md" for s in r["sheets"])
                if on_store is not None:
                    on_store(r)
            if once or stop.wait(self.config.poll_seconds):
                break
        return WatchReport(
            processed=[r for r in processed if r["status"] == "done"],
            failed=[r for r in processed if r["status"] == "failed"],
            skipped=skipped,
            waiting=waiting,
            summaries=sorted(summaries),
            state_dir=self.sdir,
        )


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
    _check_places(inbox, out)
    config.check_files()
    if poll_seconds is not None:
        config = replace(config, poll_seconds=poll_seconds)
    stop = stop or threading.Event()
    sdir = state_dir(out)
    fresh = not sdir.exists()
    sdir.mkdir(parents=True, exist_ok=True)
    try:
        with _exclusive(sdir / "lock"):
            write_json(sdir / "config.json", asdict(config), sort_keys=False)  # the resolved config
            w = _Watcher(inbox, out, config, progress=progress, retry_failed=retry_failed)
            if w.state.current:
                logger.warning("resuming after an interrupted run: %s was in progress", w.state.current.get("path"))
            try:
                return w.loop(once=once, stop=stop, on_store=on_store)
            finally:
                w.close()
    except ScanstreamError:
        if fresh and {f.name for f in sdir.iterdir()} <= {"lock", "config.json"}:
            shutil.rmtree(sdir, ignore_errors=True)  # refused before it recorded anything: leave nothing
        raise


def _check_places(inbox: Path, out: Path) -> None:
    """Refuse an inbox that is not a directory, or a candidate table inside it."""
    if not inbox.is_dir():
        raise WatchError(f"{inbox}: inbox is not a directory")
    if out.resolve() == inbox.resolve() or inbox.resolve() in out.resolve().parents:
        raise WatchError(f"{out}: the candidate table must not be inside the inbox {inbox}")
