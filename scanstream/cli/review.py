"""``scanstream review`` and ``scanstream verdicts``: decide, then feed the decisions back."""

from __future__ import annotations

import argparse
from pathlib import Path

from scanstream.cli._common import add_many
from scanstream.cli.query import add_filter_args, add_order_args, build_filter, warn_partial


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="serve the review page on localhost: each focal plane, zoom, keyboard verdicts with undo",
        description="Serve the chosen candidates on http://127.0.0.1:PORT/: each card shows the composite crop, "
        "each focal plane alone, the picker's features and the stage position; the focused one is shown zoomed "
        "1-4x with a scale bar in um. Keys: a = alpha, o = other (not alpha), ? = unsure, u = undo, n = next "
        "unreviewed, arrows or j / k to move. The page filters by sheet and score and offers both orders (highest "
        "score first, most useful first). Every verdict is appended at once to the verdicts table (a directory of "
        "per-session JSON-lines files; the latest verdict per object wins; undo withdraws one). Stop with Ctrl-C; "
        "rerun to continue, earlier verdicts are shown.",
    )
    p.add_argument("candidates", type=Path, help="candidate table directory")
    add_many(p, "--store", type=Path, default=[], metavar="STORE",
             help="crop store(s) with the candidates' crops (default: the stores the table records)")
    add_filter_args(p, top_default=200)
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other address makes every request need the "
                   "session token, carried once by the printed URL)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME[:PORT]",
                   help="a further name the browser may use for this server: an SSH tunnel (localhost:9000) or a "
                   "notebook proxy (repeatable)")
    p.add_argument("--verdicts", type=Path, metavar="DIR",
                   help="verdicts table directory (default: CANDIDATES.verdicts beside the table)")
    add_order_args(p)
    p.set_defaults(func=run_review)

    v = sub.add_parser(
        "verdicts",
        help="review verdicts: show them, or turn them into a labelled store for retraining",
        description="Work with a verdicts table written by `scanstream review`.",
    )
    vsub = v.add_subparsers(dest="verdicts_command", metavar="COMMAND")
    t = vsub.add_parser(
        "to-store",
        help="verdicts -> labelled crop store (alpha = 1, not alpha = 0)",
        description="Copy the crops of every alpha / not-alpha verdict from the source stores into a new crop "
        "store with those labels, ready for `scanstream train`. Unsure verdicts are left out unless "
        "--include-unsure (label -1). An interrupted run resumes when rerun.",
    )
    t.add_argument("verdicts", type=Path, help="verdicts table directory (or one session .jsonl file)")
    add_many(t, "--store", type=Path, required=True, metavar="SRC",
             help="source crop store(s) of the reviewed candidates")
    t.add_argument("--out", type=Path, required=True, metavar="NEW.zarr", help="the labelled store to write")
    t.add_argument("--include-unsure", action="store_true", help="keep unsure verdicts as label -1 (unknown)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    t.set_defaults(func=run_to_store)
    s = vsub.add_parser("show", help="the current verdict per object", description="Print the latest verdict "
                        "of every reviewed object and the counts per verdict.")
    s.add_argument("verdicts", type=Path, help="verdicts table directory (or one session .jsonl file)")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(func=run_show)
    v.set_defaults(func=lambda args: v.print_help() or 2)


def run_review(args: argparse.Namespace) -> int:
    from scanstream.review.server import ReviewSession, default_verdicts_path, make_server

    verdicts = args.verdicts or default_verdicts_path(args.candidates)
    session = ReviewSession(args.candidates, verdicts, stores=args.store or None, filters=build_filter(args),
                            allow_partial=args.allow_partial, order=args.order, seed=args.seed)
    warn_partial(args, session.partial)
    server = make_server(session, port=args.port, host=args.host, allowed_hosts=args.allowed_host)
    host, port = server.server_address[:2]
    where = f"http://{host}:{port}/" + ("" if args.host in ("127.0.0.1", "localhost", "::1") else f"?token={session.token}")
    print(f"reviewing {session.shown} candidates at {where}  (Ctrl-C to stop)")
    print(f"verdicts are appended to {session.log.path}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"stopped; verdicts in {verdicts}")
    return 0


def run_to_store(args: argparse.Namespace) -> int:
    from scanstream.verdicts import verdicts_to_store

    r = verdicts_to_store(args.verdicts, args.store, args.out, include_unsure=args.include_unsure,
                          overwrite=args.overwrite)
    print(f"wrote {r.rows} labelled crops to {r.out}: {r.alpha} alpha, {r.not_alpha} not alpha"
          + (f" ({r.unsure_skipped} unsure left out)" if r.unsure_skipped else ""))
    return 0


def run_show(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from scanstream.candidates.query import write_result
    from scanstream.verdicts import count_verdicts, read_verdicts

    records = read_verdicts(args.verdicts)
    cols = ["object_id", "verdict", "sheet", "score", "x_mm", "y_mm", "z_mm", "time"]
    table = pa.table({c: [r.get(c) for r in records] for c in cols})
    print(write_result(table, args.format), end="")
    if args.format == "table":
        print("counts: " + ", ".join(f"{k} {n}" for k, n in count_verdicts(records).items()))
    return 0
