"""Ingest scanner output (crop image files) into a crop store.

Two layouts of crop files (``scanstream ingest SRC STORE --format ...``):

``images``
    A folder of PNG / JPEG / TIFF crops plus a listing (CSV or Parquet) with one row per crop.
    Required columns: the file (relative to SRC), the object id and the stage position x, y, z
    in mm; optional: label, sheet, plate, module, experiment, category, and the picker's
    multiplicity, prong lengths and dips (:mod:`scanstream.ingest.listing`). Column names are
    matched case-insensitively against its ``COLUMN_ALIASES``.
``imagefolder``
    ``ROOT/<class>/<file>`` as training sets are laid out. Files in the positive class folder
    (default ``1_positive``) get label 1, files in every other class folder label 0; the
    category is the class folder's name; the object id is the file's path relative to ROOT
    (with ``/``), optionally prefixed. Stage positions are unknown (NaN).

Both run in two passes so that bad input never leaves a half-written store. The first pass
reads the listing / walks the folders and opens every image's header (no pixel decoding):
rows without files, files without rows, missing or duplicate object ids, bad values, unreadable
headers, and wrong sizes are all found before anything is written. The second pass decodes the
images in batches on a thread pool and streams them into a :class:`~scanstream.store.StoreWriter`
(which buffers one shard at a time), so memory stays flat however many files there are. An
image that fails to decode in the second pass (a truncated file) rolls the store back to what it
was before the run (a store created by the run is removed). With ``skip_bad`` every bad item is
left out instead and listed, with its reason, in ``STORE.quarantine.csv`` next to the store.

The thread pool, not the Dask executor (:mod:`scanstream.executor`): Pillow releases the GIL
while it decodes, and the decoded crops (150,528 bytes each) are needed by the one writer in this
process, which worker processes would have to send them back to. ``python benchmarks/pools.py
--files 512 --workers 2`` on the 2-core development machine (shared, load average about 18,
best of 2) decoded 512 PNG crops in 2.31 s serially, 1.62 s on this pool of 2 threads, 5.47 s
on a Dask client of 2 threads in this process (one task per file, as the pool maps them) and
16.0 s on a LocalCluster of 2 worker processes (5.3 s of it starting the cluster).

Ingest is idempotent: object ids already in the store are skipped, so a rerun on the same
source adds nothing, and a rerun after an interruption (Ctrl-C, a crash) resumes the store.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from scanstream import store as st
from scanstream.atomic import write_text
from scanstream.errors import IngestError, InputError
from scanstream.ingest.listing import parse_row, read_listing, resolve_columns, text_of

logger = logging.getLogger(__name__)

FORMATS = ("images", "imagefolder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LISTING_SUFFIXES = (".csv", ".parquet", ".pq")
DEFAULT_POSITIVE = "1_positive"
DEFAULT_NEGATIVE = "0_negative"

_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}



@dataclass(frozen=True)
class BadItem:
    """One input item left out of the store, and why."""

    item: str
    reason: str
    object_id: str | None = None

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"


@dataclass(frozen=True)
class IngestConfig:
    """How to read the source.

    Attributes
    ----------
    format : {"images", "imagefolder"}
    listing : Path or None
        ``images``: the CSV / Parquet listing (default: the only .csv / .parquet in SRC).
    positive : str
        ``imagefolder``: the class folder whose files get label 1.
    resize : bool
        Resize crops of another size to 224 x 224 (bilinear, antialiased; non-square images
        are stretched) instead of refusing them.
    skip_bad : bool
        Leave bad items out and report them in the quarantine file instead of failing.
    sheet, experiment, module, plate : optional
        Values for objects whose source does not give them (imagefolder never does).
    id_prefix : str
        ``imagefolder``: prepended to every object id (to keep two training sets apart).
    batch_size : int
        Images decoded per batch (memory holds about two batches plus one store shard).
    workers : int
        Decoding threads.
    chunk_crops, shard_crops : int
        Crops per chunk and per shard of a store this ingest creates (an existing store keeps
        its own); a shard is also the unit of a commit, so a resumed ingest redoes at most one.
    """

    format: str = "images"
    listing: Path | None = None
    positive: str = DEFAULT_POSITIVE
    resize: bool = False
    skip_bad: bool = False
    sheet: str | None = None
    experiment: str | None = None
    module: int | None = None
    plate: int | None = None
    id_prefix: str = ""
    batch_size: int = 256
    workers: int = 2
    chunk_crops: int = st.CHUNK_CROPS
    shard_crops: int = st.SHARD_CROPS

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"unknown ingest format {self.format!r}; expected one of {', '.join(FORMATS)}")
        if self.batch_size < 1 or self.workers < 1:
            raise InputError(f"batch_size and workers must be positive, got {self.batch_size}, {self.workers}")
        if self.chunk_crops < 1 or self.shard_crops < self.chunk_crops or self.shard_crops % self.chunk_crops:
            raise InputError(f"shard_crops {self.shard_crops} is not a positive multiple of chunk_crops {self.chunk_crops}")


@dataclass(frozen=True)
class IngestResult:
    """What an ingest run did."""

    store: Path
    format: str
    added: int
    already_present: int
    bad: tuple[BadItem, ...]
    quarantine: Path | None
    objects: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts (``scanstream ingest`` prints it)."""
        return {
            "store": str(self.store),
            "format": self.format,
            "added": self.added,
            "already_present": self.already_present,
            "quarantined": len(self.bad),
            "quarantine_report": str(self.quarantine) if self.quarantine else None,
            "objects_in_store": self.objects,
            "seconds": round(self.seconds, 2),
            "files_per_s": round(self.added / self.seconds, 1) if self.seconds > 0 else None,
        }


@dataclass
class _Plan:
    """Output of the first pass: what to ingest, what is already there, what is bad."""

    items: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    already_present: int = 0
    bad: list[BadItem] = field(default_factory=list)


def quarantine_path(store: str | os.PathLike) -> Path:
    """``STORE.quarantine.csv`` next to the store."""
    p = Path(store)
    return p.with_name(p.name + ".quarantine.csv")


def write_quarantine(path: Path, bad: Sequence[BadItem]) -> None:
    """Write the quarantine report (columns item, object_id, reason) atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["item", "object_id", "reason"])
    for b in bad:
        w.writerow([b.item, b.object_id or "", b.reason])
    write_text(path, buf.getvalue())


# -- images: pure decoding ----------------------------------------------------------------
def _image_problem(im: Image.Image, *, resize: bool) -> str | None:
    """Problem with an opened (not yet decoded) image, from its header (None: looks fine)."""
    if im.mode not in _EIGHT_BIT_MODES:
        return f"image mode {im.mode} is not 8-bit; convert it to 8-bit grayscale or RGB"
    frames = getattr(im, "n_frames", 1)
    if frames != 1:
        return f"image has {frames} frames; a crop is one image"
    if im.size != (st.CROP_SIZE, st.CROP_SIZE) and not resize:
        return f"image is {im.size[0]} x {im.size[1]} px, expected {st.CROP_SIZE} x {st.CROP_SIZE} (use --resize)"
    return None


def _check_header(path: Path, *, resize: bool) -> str | None:
    """Problem with an image file found from its header alone (None: looks fine)."""
    try:
        with Image.open(path) as im:
            return _image_problem(im, resize=resize)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return f"unreadable image ({exc.__class__.__name__}: {exc})"


def decode_crop(path: str | os.PathLike, *, resize: bool = False) -> np.ndarray:
    """Decode one crop file to uint8 (224, 224, 3).

    Grayscale images become three equal channels; palette, alpha and CMYK images are
    converted to RGB (alpha dropped). With ``resize`` an image of another size is resized
    to 224 x 224 (bilinear, antialiased; non-square images are stretched); without it such an
    image is refused.

    Raises
    ------
    IngestError
        Unreadable or truncated file, non-8-bit pixels, several frames, wrong size.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            problem = _image_problem(im, resize=resize)
            if problem:
                raise IngestError(f"{path}: {problem}")
            im.load()
            if im.mode in ("1", "L", "LA"):
                im = im.convert("L")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            if im.size != (st.CROP_SIZE, st.CROP_SIZE):
                im = im.resize((st.CROP_SIZE, st.CROP_SIZE), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise IngestError(f"{path}: truncated or unreadable image ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr


def _decode_or_reason(path: Path, resize: bool) -> np.ndarray | str:
    try:
        return decode_crop(path, resize=resize)
    except IngestError as exc:
        return str(exc).removeprefix(f"{path}: ")


# -- images: listings ------------------------------------------------------------------------
def find_listing(src: Path) -> Path:
    """The only CSV / Parquet file directly inside ``src``."""
    found = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in LISTING_SUFFIXES)
    if not found:
        raise IngestError(f"{src}: no listing (.csv or .parquet) in the folder; give one with --listing")
    if len(found) > 1:
        raise IngestError(f"{src}: several listings ({', '.join(p.name for p in found)}); choose one with --listing")
    return found[0]


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` names a place under ``root``, decided on the names (``..`` collapsed).

    A listing row may not climb out of its source folder (``../x.png``, ``/elsewhere/x.png``);
    a symbolic link the user put inside the folder is their choice and is followed.
    """
    def under(target: str, base: str) -> bool:
        return target == base or target.startswith(base.rstrip(os.sep) + os.sep)

    ok = under(os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root)))
    # ``link/..`` is where the link points, up one: with a ``..`` the real path must stay inside too
    return ok and (".." not in Path(path).parts or under(os.path.realpath(path), os.path.realpath(root)))


def _image_files(root: Path) -> Iterator[Path]:
    """Image files under ``root`` (recursive, hidden files and folders skipped), sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                yield Path(dirpath) / name


def _flag_duplicates(keys: list[str], what: str, positions: list[str], bad_rows: dict[int, str]) -> None:
    where: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        if k:
            where[k].append(i)
    for k, idx in where.items():
        if len(idx) > 1:
            for i in idx:
                bad_rows.setdefault(i, f"{what} {k!r} appears in {len(idx)} rows ({', '.join(positions[j] for j in idx[:5])})")


def plan_images(src: Path, cfg: IngestConfig, in_store: set[str]) -> _Plan:
    """First pass over an ``images`` source: listing, files and headers; nothing decoded."""
    listing = cfg.listing if cfg.listing is not None else find_listing(src)
    table = read_listing(listing)
    cols = resolve_columns(table.column_names, listing)
    ignored = [c for c in table.column_names if c not in cols.values()]
    if ignored:
        logger.info("%s: ignoring columns %s", listing, ignored)
    raws = table.to_pylist()
    csv_listing = listing.suffix.lower() == ".csv"
    positions = [f"line {i + 2}" if csv_listing else f"row {i}" for i in range(len(raws))]
    files = [text_of(r[cols["file"]]) for r in raws]
    ids = [text_of(r[cols["object_id"]]) for r in raws]
    bad_rows: dict[int, str] = {}
    _flag_duplicates(ids, "object id", positions, bad_rows)
    _flag_duplicates([str(Path(f)) if f else "" for f in files], "file", positions, bad_rows)

    plan = _Plan()
    listed: set[Path] = set()
    for i, raw in enumerate(raws):
        item = f"{listing}:{positions[i]}"
        if files[i]:
            listed.add((src / files[i]).resolve())
        if i in bad_rows:
            plan.bad.append(BadItem(item, bad_rows[i], ids[i] or None))
            continue
        try:
            row = parse_row(raw, cols, cfg)
        except ValueError as exc:
            plan.bad.append(BadItem(item, str(exc), ids[i] or None))
            continue
        if row["object_id"] in in_store:
            plan.already_present += 1
            continue
        if not files[i]:
            plan.bad.append(BadItem(item, "no file named", row["object_id"]))
            continue
        path = src / files[i]
        if not inside(src, path):
            plan.bad.append(BadItem(item, f"file {files[i]!r} lies outside the source folder {src}", row["object_id"]))
            continue
        if not path.is_file():
            plan.bad.append(BadItem(str(path), f"file not found (listed in {item})", row["object_id"]))
            continue
        plan.items.append((path, row))
    for path in _image_files(src):
        if path.resolve() not in listed:
            plan.bad.append(BadItem(str(path), f"file has no row in the listing {listing}"))
    return plan


def plan_imagefolder(src: Path, cfg: IngestConfig, in_store: set[str]) -> _Plan:
    """First pass over an ``imagefolder`` source: ``ROOT/<class>/<file>``; nothing decoded."""
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise IngestError(f"{src}: no class folders (expected {src}/{DEFAULT_NEGATIVE}/, {src}/{DEFAULT_POSITIVE}/)")
    if cfg.positive not in classes:
        logger.warning("%s: no positive class folder %r (folders: %s); every file gets label 0",
                       src, cfg.positive, ", ".join(classes))
    plan = _Plan()
    for path in _image_files(src):
        rel = path.relative_to(src)
        if len(rel.parts) < 2:
            plan.bad.append(BadItem(str(path), "image is not inside a class folder"))
            continue
        cls = rel.parts[0]
        oid = cfg.id_prefix + rel.as_posix()
        if oid in in_store:
            plan.already_present += 1
            continue
        row = {
            "object_id": oid,
            "label": st.LABEL_ALPHA if cls == cfg.positive else st.LABEL_OTHER,
            "category": cls,
            "x_mm": math.nan,
            "y_mm": math.nan,
            "z_mm": math.nan,
        }
        for name in ("sheet", "experiment", "module", "plate"):
            if getattr(cfg, name) is not None:
                row[name] = getattr(cfg, name)
        plan.items.append((path, row))
    return plan


def _check_headers(plan: _Plan, cfg: IngestConfig, pool: ThreadPoolExecutor) -> None:
    """Drop items whose header shows a problem (unreadable, not 8-bit, wrong size) into ``plan.bad``."""
    keep = []
    step = 4 * cfg.batch_size  # bounded number of futures in flight, whatever the item count
    for i in range(0, len(plan.items), step):
        items = plan.items[i : i + step]
        problems = pool.map(lambda it: _check_header(it[0], resize=cfg.resize), items)
        for (path, row), problem in zip(items, problems, strict=True):
            if problem:
                plan.bad.append(BadItem(str(path), problem, row["object_id"]))
            else:
                keep.append((path, row))
    plan.items = keep


def _first_error(bad: Sequence[BadItem]) -> IngestError:
    more = f" (and {len(bad) - 1} more bad items; --skip-bad ingests the rest and writes a quarantine report)"
    return IngestError(f"{bad[0]}{more if len(bad) > 1 else ''}")


def ingest(
    src: str | os.PathLike,
    store: str | os.PathLike,
    config: IngestConfig | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> IngestResult:
    """Ingest crop image files from ``src`` into the crop store ``store`` (created if missing).

    Parameters
    ----------
    src : path-like
        The source folder (layout per ``config.format``; module docstring).
    store : path-like
        The ``NAME.zarr`` crop store; an existing one is appended to (ids already there skipped),
        an interrupted one resumed.
    config : IngestConfig
    progress : callable, optional
        Called with the number of images just written (for a progress bar).
    total : callable, optional
        Called once with the number of images to write, after the first pass.

    Returns
    -------
    IngestResult

    Raises
    ------
    IngestError
        Without ``skip_bad``: the first bad item (file and problem), the store untouched.
        Always: an unusable source (no listing, a missing required column, no class folders).
    """
    cfg = config or IngestConfig()
    src, store = Path(src), Path(store)
    t0 = time.perf_counter()
    if not src.is_dir():
        raise IngestError(f"{src}: no such source folder")
    in_store: set[str] = set()
    if store.exists():
        if not st.is_store(store):
            raise IngestError(f"{store}: exists and is not a crop store")
        in_store = set(st.open_store(store, require_complete=False).object_ids)

    with ThreadPoolExecutor(cfg.workers) as pool:
        plan = (plan_images if cfg.format == "images" else plan_imagefolder)(src, cfg, in_store)
        _check_headers(plan, cfg, pool)
        if plan.bad and not cfg.skip_bad:
            raise _first_error(plan.bad)
        if total is not None:
            total(len(plan.items))
        added = _write(plan, store, src, cfg, pool, progress)
    quarantine = None
    if cfg.skip_bad:
        quarantine = quarantine_path(store)
        write_quarantine(quarantine, plan.bad)
        if plan.bad:
            logger.info("%s: %d bad items left out; see %s", src, len(plan.bad), quarantine)
    objects = st.open_store(store).n if st.is_store(store) else 0
    return IngestResult(store, cfg.format, added, plan.already_present, tuple(plan.bad), quarantine, objects,
                        time.perf_counter() - t0)


def _write(plan: _Plan, store: Path, src: Path, cfg: IngestConfig, pool: ThreadPoolExecutor,
           progress: Callable[[int], None] | None) -> int:
    """Second pass: decode in batches and stream into the store; returns crops added."""
    source = {
        "stage": "ingest", "format": cfg.format, "src": str(src),
        "listing": str(cfg.listing) if cfg.listing else None, "resize": cfg.resize,
        "positive": cfg.positive if cfg.format == "imagefolder" else None,
    }
    added = 0
    writer = st.StoreWriter(store, source=source, chunk_crops=cfg.chunk_crops, shard_crops=cfg.shard_crops)
    with writer:
        try:
            # decode batch k+1 while batch k is being appended
            batches = [plan.items[i : i + cfg.batch_size] for i in range(0, len(plan.items), cfg.batch_size)]
            pending = pool.map(lambda it: _decode_or_reason(it[0], cfg.resize), batches[0]) if batches else None
            for k, batch in enumerate(batches):
                decoded = list(pending)
                if k + 1 < len(batches):
                    pending = pool.map(lambda it: _decode_or_reason(it[0], cfg.resize), batches[k + 1])
                crops, rows = [], []
                for (path, row), result in zip(batch, decoded, strict=True):
                    if isinstance(result, str):
                        if not cfg.skip_bad:
                            raise IngestError(f"{path}: {result}")
                        plan.bad.append(BadItem(str(path), result, row["object_id"]))
                        continue
                    crops.append(result)
                    rows.append(row)
                if crops:
                    writer.append(np.stack(crops), rows)
                    added += len(crops)
                if progress is not None:
                    progress(len(batch))
        except IngestError:
            writer.rollback()
            raise
    return added
