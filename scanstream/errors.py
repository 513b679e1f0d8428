"""The scanstream error hierarchy.

Every error a user can cause derives from :class:`ScanstreamError` and from the matching
built-in, so library callers can catch ``ValueError`` / ``FileNotFoundError`` as usual while
the CLI turns any ``ScanstreamError`` into one line on stderr and a non-zero exit.
Messages name the file, the object and the bad value.
"""

from __future__ import annotations


class ScanstreamError(Exception):
    """Base of every error scanstream raises on purpose."""


class InputError(ScanstreamError, ValueError):
    """A bad argument, option value or input file."""


class ConfigError(ScanstreamError, ValueError):
    """A configuration value or TOML file that cannot be used."""


class StoreError(ScanstreamError, ValueError):
    """A crop store that is malformed or inconsistent."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """A crop store path that does not exist or is not a crop store."""


class IncompleteStoreError(StoreError):
    """A crop store without its completion marker (an interrupted write)."""


class StoreExistsError(StoreError, FileExistsError):
    """A store already exists where a new one was asked for (use ``overwrite``)."""


class CheckpointError(ScanstreamError, ValueError):
    """A model checkpoint that is missing, malformed or not a safetensors file."""


class ThresholdError(ScanstreamError, ValueError):
    """A threshold record that is malformed or belongs to other models."""


class PipelineError(ScanstreamError, RuntimeError):
    """A distributed run that finished with failed tasks."""


class SchedulerError(InputError):
    """A Dask scheduler address that cannot be reached, or a cluster that cannot be started as asked."""


class TaskError(PipelineError):
    """One distributed task failed; the message names the store and the crop range."""


class TrainingError(ScanstreamError, RuntimeError):
    """A training run that could not produce a model (e.g. a loss that never became finite)."""


class IngestError(InputError):
    """Bad scanner output: names the file (or listing row) and the problem."""


class StackError(InputError):
    """A z-stack whose info.json or images cannot be used (names the file and the key)."""


class QueryError(InputError):
    """A query that cannot run: bad filter value, refused or failing SQL, no candidate table."""


class VerdictError(InputError):
    """A bad verdict value, an unreadable verdicts table, or verdicts that cannot become a store."""


class NothingToUndoError(VerdictError):
    """Undo asked of the review page when it has recorded no verdict since it started (HTTP 409)."""


class WatchError(InputError):
    """An inbox or candidate table the watcher cannot use, or a second watcher on one table."""


class IncompleteTableError(InputError):
    """A candidate table without its manifest (``_manifest.parquet``) (a run that has not finished); readers refuse it."""


class TableIntegrityError(InputError):
    """A candidate table whose parts do not match its manifest: a part missing, extra, truncated or replaced."""
