"""A field's planes decoded straight from its shard files: the picker's read of a whole field.

A volume store's level-0 array (:mod:`scanstream.store.volume`) is sharded: shards of several
planes, each plane one inner chunk, zstd-compressed, the shard's index at its end (zarr v3's
``sharding_indexed`` codec). zarr decodes such a shard chunk by chunk through its asynchronous
codec pipeline, which costs about as much CPU again as the decompression itself (0.15-0.34 CPU-s
against 0.09-0.18 for a 76-plane 1024 x 1024 field). :func:`read_all_planes` reads each shard
file once and decompresses its planes into the output array with numcodecs' zstd, a dependency
of zarr's own zstd codec. It handles only that layout, on a local store; for any other array,
or any shard it cannot vouch for (a checksum or a size that does not match), it returns None
and the caller reads through zarr, which raises its own errors: the store's format is unchanged
and every store zarr reads still reads.
"""

from __future__ import annotations

from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from numcodecs import Zstd

_EMPTY = 2**64 - 1  # an index entry's offset and size for a chunk never written
_ZSTD = Zstd()


def read_all_planes(array: zarr.Array) -> np.ndarray | None:
    """Every plane of ``array`` (uint8 (z, y, x)) from its shard files, or None (module docstring).

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> a = zarr.create_array(f"{d}/a.zarr", shape=(3, 4, 5), chunks=(1, 4, 5), shards=(2, 4, 5),
    ...                       dtype="uint8", compressors=zarr.codecs.ZstdCodec(level=3))
    >>> a[:2] = 7
    >>> read_all_planes(zarr.open_array(f"{d}/a.zarr", mode="r"))[:, 0, 0].tolist()  # plane 2: fill value
    [7, 7, 0]
    """
    root = _shard_root(array)
    if root is None:
        return None
    nz, h, w = array.shape
    per = array.shards[0]
    out = np.empty((nz, h, w), np.uint8)
    for s in range(0, nz, per):
        if not _read_shard(root / "c" / str(s // per) / "0" / "0", out[s : s + per], per, int(array.fill_value)):
            return None
    return out


def _shard_root(array: zarr.Array) -> Path | None:
    """The array's folder when it has the one layout :func:`read_all_planes` decodes, else None."""
    if not isinstance(array.store, zarr.storage.LocalStore) or array.ndim != 3 or array.dtype != np.uint8:
        return None
    meta = array.metadata.to_dict()
    codecs = meta.get("codecs") or ()
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    conf = codecs[0].get("configuration", {})
    inner = [c.get("name") for c in conf.get("codecs", ())]
    index = [c.get("name") for c in conf.get("index_codecs", ())]
    key = meta.get("chunk_key_encoding", {})
    h, w = array.shape[1:]
    if (inner != ["bytes", "zstd"] or index != ["bytes", "crc32c"] or conf.get("index_location", "end") != "end"
            or tuple(conf.get("chunk_shape", ())) != (1, h, w) or tuple(array.shards) != (array.shards[0], h, w)
            or key.get("name") != "default" or key.get("configuration", {}).get("separator") != "/"):
        return None
    return Path(array.store.root) / array.path


def _read_shard(path: Path, out: np.ndarray, per: int, fill: int) -> bool:
    """Decode the shard file ``path`` (``per`` planes a shard) into ``out`` (its planes); False
    where the shard is not what its index and checksum say (the caller then reads through zarr)."""
    try:
        buf = path.read_bytes()
    except FileNotFoundError:  # a shard never written: the fill value
        out[...] = fill
        return True
    except OSError:
        return False
    size = 16 * per
    if len(buf) < size + 4:
        return False
    raw = buf[len(buf) - size - 4 : len(buf) - 4]
    if google_crc32c.value(raw) != int.from_bytes(buf[len(buf) - 4 :], "little"):
        return False
    index = np.frombuffer(raw, "<u8").reshape(per, 2)
    plane = out[0].size
    view = memoryview(buf)
    for k in range(len(out)):
        offset, nbytes = (int(v) for v in index[k])
        if offset == _EMPTY and nbytes == _EMPTY:
            out[k] = fill
            continue
        if offset + nbytes > len(buf) - size - 4:
            return False
        try:
            data = _ZSTD.decode(view[offset : offset + nbytes])
        except (RuntimeError, ValueError):  # not a zstd frame: zarr says what is wrong
            return False
        if len(data) != plane:
            return False
        out[k] = np.frombuffer(data, np.uint8).reshape(out[k].shape)
    return True
