"""``scanstream query`` and ``scanstream gallery``: find candidates, then look at them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scanstream.cli._common import add_many


def add_filter_args(p: argparse.ArgumentParser, *, top_default: int | None = None) -> None:
    """The row filters shared by query, gallery and review."""
    p.add_argument("--sheet", help="keep one sheet (exact match)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--selected", action="store_true", help="keep rows whose score passed the threshold")
    sel.add_argument("--min-score", type=float, metavar="X", help="keep rows with score >= X (logit)")
    p.add_argument("--region", metavar="X0,X1,Y0,Y1", help="keep rows inside this stage rectangle (mm)")
    p.add_argument(
        "--top", type=int, metavar="K", default=top_default,
        help="keep the K highest-scoring rows" + (f" (default {top_default})" if top_default else ""),
    )
    p.add_argument(
        "--allow-partial", action="store_true",
        help="read a table without its _manifest.parquet (an unfinished or killed run: rows may be missing or "
        "unranked); the output is labelled PARTIAL",
    )


def add_order_args(p: argparse.ArgumentParser) -> None:
    """--order and --seed, shared by review and gallery (their --top: the first K of the order)."""
    p.add_argument("--order", choices=["score", "useful"], default="score",
                   help="score: highest score first (default). useful: a stratified random sample of every score "
                   "band of the sheet, from the top through the threshold to the bulk where missed alpha decays "
                   "hide; verdicts given in it let `scanstream threshold CANDIDATES --verdicts DIR` recalibrate the "
                   "sheet's threshold with an unbiased recall estimate (takes --sheet and --top only; --top K = the "
                   "first K of the order)")
    p.add_argument("--seed", type=int, default=0, help="seed of the useful order's random sample (default 0)")


def warn_partial(args: argparse.Namespace, partial: bool) -> None:
    """The one stderr line that labels output made from an unfinished table."""
    if partial:
        from scanstream.candidates.query import PARTIAL_LABEL

        print(f"scanstream {args.verb}: {args.candidates}: {PARTIAL_LABEL}", file=sys.stderr)


def build_filter(args: argparse.Namespace, *, selected: bool | None = None):
    from scanstream.candidates.query import CandidateFilter, parse_region

    return CandidateFilter(
        sheet=args.sheet,
        selected=bool(args.selected if selected is None else selected or args.selected),
        min_score=args.min_score,
        region=parse_region(args.region) if args.region is not None else None,
        top=args.top,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="filter a candidate table or run SQL on it (DuckDB)",
        description="Query a candidate table (a directory of sheet-*/part-*.parquet files) with DuckDB. "
        "Filters narrow the rows (their values are bound parameters, never spliced into SQL); without "
        "--sql the result is the filtered rows, highest score first. --sql runs one read-only SELECT "
        "against a view named `candidates` holding the filtered rows. --revisit orders the selected rows "
        "of each plate along a short stage path (nearest neighbour + 2-opt) and writes the revisit list "
        "(sheet, plate, visit, object_id, x_mm, y_mm, z_mm, step_mm) for the microscope.",
    )
    p.add_argument("candidates", type=Path, help="candidate table directory")
    add_filter_args(p)
    p.add_argument("--sql", help='one SELECT statement over the view `candidates`, e.g. "SELECT sheet, count(*) '
                   'FROM candidates WHERE selected GROUP BY sheet"')
    p.add_argument("--format", choices=["table", "csv", "parquet", "json"],
                   help="output format (default: table on stdout, else from --out's suffix, csv otherwise)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the result here (atomically) instead of stdout")
    p.add_argument("--revisit", action="store_true",
                   help="order the selected rows of each plate along a short stage path (a revisit list)")
    p.set_defaults(func=run_query)

    g = sub.add_parser(
        "gallery",
        help="static HTML page + PNG contact sheet of candidate crops",
        description="Write DIR/index.html (every chosen candidate's crop with id, score, probability, rank and "
        "stage position, highest score first), DIR/crops/*.png and DIR/contact_sheet.png. Crops are read "
        "from the crop stores (matched by object id; by default the stores recorded in the table).",
    )
    g.add_argument("candidates", type=Path, help="candidate table directory")
    add_many(g, "--store", type=Path, default=[], metavar="STORE",
             help="crop store(s) holding the candidates' crops (default: the stores the table records)")
    add_filter_args(g, top_default=200)
    g.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory (replaced atomically)")
    g.add_argument("--sheet-columns", type=int, default=10, help="crops per row of the contact sheet (default 10)")
    add_order_args(g)
    g.set_defaults(func=run_gallery)


def run_query(args: argparse.Namespace) -> int:
    from scanstream.candidates.query import infer_format, query_candidates, write_result
    from scanstream.candidates.table import require_complete

    fmt = infer_format(args.out, args.format)
    partial = require_complete(args.candidates, allow_partial=args.allow_partial) is None
    table = query_candidates(args.candidates, build_filter(args, selected=args.revisit or None), sql=args.sql,
                             allow_partial=args.allow_partial)
    if args.revisit:
        from scanstream.candidates.revisit import revisit_table

        table = revisit_table(table).replace_schema_metadata(table.schema.metadata)
    text = write_result(table, fmt, args.out)
    warn_partial(args, partial)
    if text is not None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        print(f"wrote {table.num_rows} rows to {args.out}" + (" (PARTIAL table)" if partial else ""))
    return 0


def run_gallery(args: argparse.Namespace) -> int:
    from scanstream.review.gallery import write_gallery

    result = write_gallery(
        args.candidates, args.out, stores=args.store or None, filters=build_filter(args), columns=args.sheet_columns,
        allow_partial=args.allow_partial, order=args.order, seed=args.seed,
    )
    warn_partial(args, result.partial)
    print(f"gallery of {result.count} candidates{' (PARTIAL table)' if result.partial else ''}: {result.html}")
    print(f"contact sheet: {result.contact_sheet}")
    return 0
