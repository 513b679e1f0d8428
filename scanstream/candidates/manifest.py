"""The candidate table's part records: what the manifest says of every part, and the checks on it.

When a run completes, its manifest lists every part file (path relative to the table) with its
row count, byte size, a digest of its Parquet footer and a digest of the whole file (xxh3-128).
Every reader checks the table against these records on open (:func:`check_parts`): the same
set of part files, each of the recorded size with the recorded footer. That costs one small
read per part (the footer holds every column chunk's offsets, sizes and statistics and the
run's metadata, so a part truncated, replaced or rewritten by another run fails it), not a read
of the data. :func:`check_parts` with ``deep`` also compares every whole file with its digest
(``scanstream info --validate``).

Manifests written before these records (tables of version 1, and version-2 tables of earlier
releases) list no digests: their tables stay readable, with a note that they cannot be checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from scanstream.errors import TableIntegrityError

#: The manifest key holding ``{relative part path: record}`` (absent from older manifests).
FILES_KEY = "files"
#: The manifest key holding the records of sheets a merge is switching in (either version of such a sheet is whole).
PENDING_KEY = "pending"
#: The digest of part files and footers.
DIGEST = "xxh3_128"
#: What an older manifest, which lists no part records, is told.
UNVERIFIABLE = "written by an earlier release: its manifest lists no part digests, so its parts cannot be checked"
_MAGIC = b"PAR1"


def footer_digest(path: str | os.PathLike) -> tuple[int, str]:
    """``(file size in bytes, xxh3-128 hex of the Parquet footer)``; a file that is no Parquet gives an empty digest."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < 12:
            return size, ""
        f.seek(size - 8)
        tail = f.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != _MAGIC or length + 8 > size:
            return size, ""
        f.seek(size - 8 - length)
        return size, xxhash.xxh3_128(f.read(length + 8)).hexdigest()


def file_digest(path: str | os.PathLike, *, block: int = 1 << 22) -> str:
    """xxh3-128 hex of the whole file."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def part_record(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest's record of one part: rows, bytes, footer digest and file digest."""
    size, footer = footer_digest(path)
    return {"rows": pq.read_metadata(path).num_rows, "bytes": size, "footer": footer, "digest": file_digest(path)}


def part_records(table: Path, parts: Iterable[Path], previous: Mapping[str, Any] | None = None,
                 rewritten: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: record}`` of ``parts``; records of ``previous`` are kept for parts outside ``rewritten`` sheets.

    A merge rewrites only the sheets it touches (``rewritten``: sheet directory names), so the
    untouched parts keep the records of the manifest before it and are not read again.
    """
    previous, rewritten = previous or {}, set(rewritten)
    out = {}
    for p in parts:
        rel = p.relative_to(table).as_posix()
        keep = rel in previous and p.parent.name not in rewritten
        out[rel] = dict(previous[rel]) if keep else part_record(p)
    return out


def verifiable(manifest: Mapping[str, Any]) -> bool:
    """Whether ``manifest`` lists part records (written by this release or a later one)."""
    return isinstance(manifest.get(FILES_KEY), dict)


def check_parts(table: str | os.PathLike, manifest: Mapping[str, Any], parts: Sequence[Path], *,
                deep: bool = False) -> list[str]:
    """Problems of ``parts`` (the part files on disk) against the manifest's records, one line each; [] if none.

    Each problem names the part: missing (listed, not on disk), extra (on disk, not listed),
    truncated or replaced (size or footer differs), and with ``deep`` a whole-file digest that
    differs. While a merge switches sheets in (:data:`PENDING_KEY`), a sheet may match either
    its recorded parts or the pending ones. A manifest without records gives [] (see
    :func:`verifiable`).
    """
    table = Path(table)
    if not verifiable(manifest):
        return []
    recorded = _by_sheet(manifest[FILES_KEY])
    on_disk = _by_sheet({p.relative_to(table).as_posix(): p for p in parts})
    pending = _by_sheet(manifest.get(PENDING_KEY) or {})
    problems = []
    for sheet in sorted(recorded.keys() | on_disk.keys()):
        here = on_disk.get(sheet, {})
        found = _sheet_problems(table, recorded.get(sheet, {}), here, deep)
        if found and sheet in pending:
            found = found if _sheet_problems(table, pending[sheet], here, deep) else []
        problems += found
    return problems


def _by_sheet(items: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{relative part path: x}`` grouped by sheet directory."""
    out: dict[str, dict[str, Any]] = {}
    for rel, x in items.items():
        out.setdefault(rel.split("/", 1)[0], {})[rel] = x
    return out


def _sheet_problems(table: Path, recorded: Mapping[str, Any], here: Mapping[str, Path], deep: bool) -> list[str]:
    """Problems of one sheet's parts on disk (``here``) against its ``recorded`` ones."""
    problems = [f"{table / rel}: part listed in the manifest is missing" for rel in sorted(set(recorded) - set(here))]
    problems += [f"{table / rel}: part not listed in the manifest (added after the run finished)"
                 for rel in sorted(set(here) - set(recorded))]
    for rel in sorted(set(recorded) & set(here)):
        rec, path = recorded[rel], here[rel]
        try:
            size, footer = footer_digest(path)
        except OSError as exc:
            problems.append(f"{path}: unreadable part: {exc.strerror or exc}")
            continue
        if size != rec.get("bytes") or footer != rec.get("footer"):
            how = "truncated" if size < int(rec.get("bytes") or 0) else "replaced or rewritten"
            problems.append(f"{path}: part does not match the manifest ({size} bytes, {rec.get('bytes')} recorded: "
                            f"{how})")
        elif deep and file_digest(path) != rec.get("digest"):
            problems.append(f"{path}: part's content digest differs from the manifest (damaged or replaced)")
    return problems


def verify(table: str | os.PathLike, manifest: Mapping[str, Any], parts: Sequence[Path], *,
           deep: bool = False) -> None:
    """Refuse a table whose parts do not match its manifest (:func:`check_parts`), naming the first bad part.

    Raises
    ------
    TableIntegrityError
        A part is missing, extra, truncated or replaced (or, with ``deep``, its digest differs).
    """
    problems = check_parts(table, manifest, parts, deep=deep)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise TableIntegrityError(f"candidate table damaged: {problems[0]}{more}; rerun classify into a new directory")


def unreadable_part(parts: Sequence[Path]) -> tuple[Path, str] | None:
    """The first part whose Parquet footer cannot be read, and why; None when all can."""
    for p in parts:
        try:
            pq.read_metadata(p)
        except (OSError, pa.ArrowException) as exc:
            return p, " ".join(str(exc).split()) or type(exc).__name__
    return None
