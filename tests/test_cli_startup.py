"""The CLI answers at once: what ``--help``, ``info`` and ``query`` import, and the shared grammar.

``python -X importtime`` lists every module a command imports; the commands that only read
(``--help``, ``info`` on a candidate table, ``query``) must load none of torch, torchvision,
scikit-learn or scipy (seconds of start-up on two cores; issue 25). How fast they then start is
measured by benchmarks/cli_startup.py, not asserted here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import load_script

from scanstream.cli import build_parser, main

HEAVY = ("torch", "torchvision", "sklearn", "scipy")


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A complete candidate table with a calibrated threshold record (info computes every trust field)."""
    return load_script("benchmarks/cli_startup.py").synthetic_table(tmp_path_factory.mktemp("startup"), rows=64)


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names in ``-X importtime`` output (``import time: self | cumulative | name`` lines)."""
    out = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                out.add(name)
    return out


def test_imported_modules_reads_importtime_lines():
    text = ("import time: self [us] | cumulative | imported package\nimport time:       120 |        200 |   torch._C\n"
            "import time:        33 |         33 | scanstream.cli\nWARNING something else | not | this\n")
    assert imported_modules(text) == {"torch._C", "scanstream.cli"}


@pytest.mark.parametrize("verb", [["--help"], ["info", "TABLE"], ["query", "TABLE", "--top", "3"],
                                  ["query", "TABLE", "--sql", "SELECT count(*) AS n FROM candidates"]],
                         ids=["help", "info", "query", "query-sql"])
def test_reading_verbs_import_no_torch_sklearn_or_scipy(verb, table):
    argv = [str(table) if a == "TABLE" else a for a in verb]
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "scanstream", *argv], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = imported_modules(done.stderr)
    assert "scanstream.cli" in modules  # the output was read: the check below can fail
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"scanstream {' '.join(verb)} imports {heavy[:10]}"
    if verb[0] != "--help":
        assert done.stdout.strip()  # the verb ran and answered


@pytest.mark.parametrize("argv", [["--no-progress", "query", "TABLE", "--top", "2"],
                                  ["query", "TABLE", "--top", "2", "--no-progress"],
                                  ["-v", "--no-progress", "query", "TABLE", "--top", "2"],
                                  ["query", "TABLE", "-v", "--top", "2", "--no-progress"]])
def test_verbose_and_no_progress_before_or_after_the_verb(argv, table, capsys):
    argv = [str(table) if a == "TABLE" else a for a in argv]
    args = build_parser().parse_args(argv)
    assert args.no_progress is True
    assert args.verbose == ("-v" in argv)
    assert main(argv) == 0
    assert "(2 rows)" in capsys.readouterr().out


def test_no_progress_before_a_verb_with_its_own_flag_survives_the_verbs_default():
    # ingest and train define --no-progress themselves; the verb's default must not undo the flag given before it
    before = build_parser().parse_args(["--no-progress", "ingest", "src", "s.zarr", "--format", "images"])
    assert before.no_progress is True
    assert build_parser().parse_args(["ingest", "src", "s.zarr", "--format", "images"]).no_progress is False
    assert build_parser().parse_args(["info", "x.zarr"]).no_progress is False


@pytest.mark.parametrize("argv, usage", [(["query", "TABLE", "--bogus"], "usage: scanstream query"),
                                         (["info", "TABLE", "--top", "3"], "usage: scanstream info"),
                                         (["verdicts", "show", "v", "--bogus"], "usage: scanstream verdicts show")])
def test_an_unknown_flag_prints_the_verbs_usage(argv, usage, table, capsys):
    argv = [str(table) if a == "TABLE" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"unrecognized arguments: {argv[-1] if argv[-1] != '3' else '--top 3'}" in err


def test_an_unknown_flag_before_any_verb_prints_the_top_usage(capsys):
    with pytest.raises(SystemExit):
        main(["--bogus"])
    assert capsys.readouterr().err.startswith("usage: scanstream [-h]")


def test_benchmark_sample_help_shows_the_librarys_default():
    from scanstream.cli.benchmark import SAMPLE_HELP_DEFAULT
    from scanstream.inference.benchmark import DEFAULT_SAMPLE

    assert SAMPLE_HELP_DEFAULT == DEFAULT_SAMPLE
