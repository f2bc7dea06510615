"""A report from runs: tables, aggregate scores with confidence intervals, learning curves.

    python recipes/report.py outputs/offline_cql                      # every run below it
    python recipes/report.py multirun/offline_cql/2026-11-30_12-00-00 multirun/... --out report
    python recipes/report.py outputs --reference none --reps 10000

Writes <out>/report.md and one learning-curve PNG per dataset (cql_modules.report).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from cql_modules.report import DEFAULT_REFERENCE, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="outputs/ or multirun/ directories, or run directories")
    parser.add_argument("--out", default="report", help="where report.md and the PNGs go (default: ./report)")
    parser.add_argument("--reference", default=str(DEFAULT_REFERENCE),
                        help="reference scores CSV (default: CORL's CQL table shipped here; 'none': no column)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        path = write_report(args.dirs, args.out, reference=None if args.reference == "none" else args.reference,
                            reps=args.reps, seed=args.seed,
                            command=shlex.join(["python", "recipes/report.py", *argv]))
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as err:
        print(f"report.py: error: {err}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
