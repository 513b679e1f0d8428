"""One grammar across verbs: flags every verb accepts after its name as well as before."""

from __future__ import annotations

import pytest

from scanstream.cli import _verb_parsers, build_parser, main


def verbs():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return _verb_parsers(sub)


def test_every_verb_takes_verbose_and_no_progress():
    parsers = verbs()
    assert len(parsers) >= 20  # every verb, nested commands included
    missing = [p.prog for p in parsers if not {"-v", "--no-progress"} <= set(p._option_string_actions)]
    assert not missing


@pytest.mark.parametrize("argv", [["-v", "simulate"], ["simulate", "-v"], ["simulate", "-vv", "--no-progress"]])
def test_verbose_and_no_progress_before_or_after_the_verb(tmp_path, argv, capsys):
    verb_args = [str(tmp_path / "s.zarr"), "--objects", "2", "--alpha-fraction", "0.5", "--sheet", "A"]
    i = argv.index("simulate") + 1
    assert main([*argv[:i], *verb_args, *argv[i:]]) == 0
    assert "%|" not in capsys.readouterr().err  # no progress bar in a captured (non-terminal) stream


def test_verbose_after_the_verb_counts():
    args = build_parser().parse_args(["info", "x.zarr", "-vv"])
    assert args.verbose == 2
    assert build_parser().parse_args(["-v", "info", "x.zarr"]).verbose == 1
    assert build_parser().parse_args(["info", "x.zarr"]).verbose == 0
