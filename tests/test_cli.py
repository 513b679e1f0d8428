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


def _parse(argv):
    """Parse as main does, old spellings applied (the deprecation lines go to stderr)."""
    from scanstream.cli._common import apply_deprecated

    args = build_parser().parse_args(argv)
    apply_deprecated(args)
    return args


def test_primary_inputs_are_positional():
    assert _parse(["threshold", "v.zarr", "--model", "a", "b", "--target-recall", "0.9", "--out", "t.json"]).store.name \
        == "v.zarr"
    assert _parse(["benchmark", "s.zarr", "--model", "a"]).store.name == "s.zarr"
    assert [p.name for p in _parse(["evaluate", "c1", "c2", "--store", "s.zarr", "--out", "r"]).candidates] == ["c1", "c2"]
    args = _parse(["train", "t.zarr", "v.zarr", "--out", "run"])
    assert (args.train.name, args.valid.name) == ("t.zarr", "v.zarr")
    args = _parse(["search", "t.zarr", "v.zarr", "--out", "s"])
    assert (args.train.name, args.valid.name) == ("t.zarr", "v.zarr")


@pytest.mark.parametrize("verb", [
    ["classify", "s.zarr", "--out", "c"],
    ["threshold", "s.zarr", "--target-recall", "0.9", "--out", "t.json"],
    ["benchmark", "s.zarr"],
    ["watch", "inbox", "--out", "c"],
])
def test_model_takes_one_or_more_at_once_or_repeated(verb):
    once = _parse([*verb, "--model", "a", "b"]).model
    repeated = _parse([*verb, "--model", "a", "--model", "b"]).model
    assert [p.name for p in once] == [p.name for p in repeated] == ["a", "b"]


def test_store_lists_take_one_or_more():
    args = _parse(["gallery", "c", "--out", "g", "--store", "a.zarr", "b.zarr", "--store", "c.zarr"])
    assert [p.name for p in args.store] == ["a.zarr", "b.zarr", "c.zarr"]
    args = _parse(["evaluate", "c", "--store", "a.zarr", "b.zarr", "--out", "r"])
    assert [p.name for p in args.store] == ["a.zarr", "b.zarr"]


def test_one_precision_vocabulary():
    for verb in (["classify", "s.zarr", "--model", "a", "--out", "c"],
                 ["threshold", "s.zarr", "--model", "a", "--target-recall", "0.9", "--out", "t"],
                 ["train", "t.zarr", "v.zarr", "--out", "r"]):
        assert _parse([*verb, "--precision", "fp32"]).precision == "fp32"
        with pytest.raises(SystemExit):
            _parse([*verb, "--precision", "off"])


@pytest.mark.parametrize("old, new, dest", [
    (["threshold", "--store", "v.zarr", "--model", "a", "--target-recall", "0.9", "--out", "t"], None, "store"),
    (["benchmark", "--store", "s.zarr", "--model", "a"], None, "store"),
    (["evaluate", "--candidates", "c1", "--candidates", "c2", "--store", "s", "--out", "r"], None, "candidates"),
    (["train", "--train", "t.zarr", "--valid", "v.zarr", "--out", "r"], None, "train"),
    (["search", "--train", "t.zarr", "--valid", "v.zarr", "--out", "s"], None, "valid"),
    (["train", "t.zarr", "v.zarr", "--out", "r", "--amp", "off"], "fp32", "precision"),
])
def test_old_spellings_still_work_with_a_deprecation_line(old, new, dest, capsys):
    args = _parse(old)
    value = getattr(args, dest)
    assert value is not None and (new is None or value == new)
    err = capsys.readouterr().err
    assert "is deprecated and goes in scanstream 0.3" in err and err.count("\n") >= 1


def test_an_input_given_both_ways_or_not_at_all_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["threshold", "v.zarr", "--store", "w.zarr", "--model", "a", "--target-recall", "0.9",
                 "--out", str(tmp_path / "t")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["threshold", "--model", "a", "--target-recall", "0.9", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["scanstream threshold: error: VALID.zarr is required (scanstream threshold VALID.zarr ...; see --help)"]


def test_training_config_reads_the_old_amp_key():
    from scanstream.training.config import config_from_dict

    with pytest.warns(DeprecationWarning, match="'amp' is deprecated"):
        cfg = config_from_dict({"train_store": "t", "valid_store": "v", "out_dir": "o", "amp": "off"})
    assert cfg.precision == "fp32"


def test_every_cluster_a_verb_starts_prints_its_dashboard(capsys):
    """Every verb reaches Dask through executor.dask_client, which logs the link the CLI prints."""
    import logging

    from scanstream.cli import _show_dashboard
    from scanstream.executor import dask_client

    _show_dashboard(build_parser().parse_args(["info", "x.zarr"]))
    try:
        with dask_client(None, workers=1, processes=False):
            pass
    finally:
        logging.getLogger("scanstream.dashboard").handlers.clear()
    assert "scanstream info: Dask dashboard: http" in capsys.readouterr().err
