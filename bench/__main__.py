"""``python -m bench`` (what ``make bench`` runs): see bench/README.md."""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from bench.gateway import ROOT
from bench.load import wrk_available
from bench.report import markdown, write_json
from bench.runner import MAIN, SCALING, Bench, Options, ensure_tools


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per target (default 3)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke: short runs, no 1 MB and no 100k hooks"
    )
    parser.add_argument(
        "--only",
        default=",".join(MAIN + SCALING),
        help=f"comma-separated subset of: {', '.join(MAIN + SCALING)}",
    )
    parser.add_argument("--loadgen", action="store_true", help="use bench.loadgen even with wrk")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--no-install", action="store_true", help="never apt-get wrk/webhook")
    parser.add_argument("--keep", action="store_true", help="keep var/bench-* (data dir, logs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 1 when a verification failed or the gateway accepted nothing."""
    args = _parser().parse_args(argv)
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    unknown = set(only) - set(MAIN + SCALING)
    if unknown:
        print(f"bench: unknown --only names: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    notes = ensure_tools(install=not args.no_install)
    options = Options(
        duration=args.duration or (3.0 if args.quick else 10.0),
        warmup=args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0),
        connections=args.connections,
        workers=args.workers,
        quick=args.quick,
        only=only,
        use_wrk=wrk_available() and not args.loadgen,
        wrk_threads=args.wrk_threads,
    )
    run_dir = ROOT / "var" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    bench = Bench(options, run_dir)
    bench.notes += notes
    started = time.monotonic()
    try:
        bench.run()
    except Exception as exc:
        bench.notes.append(f"bench aborted: {type(exc).__name__}: {exc}")
        bench.gateway.stop()
        print(markdown(bench))
        print(f"bench: aborted; logs in {run_dir}", file=sys.stderr)
        return 1
    bench.notes.append(f"total bench time {time.monotonic() - started:.0f} s")
    print(markdown(bench))
    result = write_json(bench)
    print(f"bench: results written to {result.relative_to(ROOT)}", file=sys.stderr)
    failed = any(m.failed for m in bench.measurements)
    if not failed and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif failed:
        print(f"bench: FAILED; logs kept in {run_dir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
