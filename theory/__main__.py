"""``python -m theory [--quick|--full] [--claims C.2 C.7] [--out DIR] [--no-plots]``

Runs every registered claim (search, corrected statements, sympy checks), prints the claims
table and writes ``theory/report/claims.md``, ``claims.json`` and PNG plots.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# compile speed over run speed: the searches are many small programs compiled once each
# (only this process; set before jax initialises its backend)
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

from theory.report import REPORT_DIR, print_table, run_all, write_report
from theory.search import SearchConfig


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m theory", description=__doc__)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small search budgets (tests, CI)")
    g.add_argument("--full", action="store_true", help="large search budgets")
    ap.add_argument("--claims", nargs="*", help="only these claim ids (e.g. C.2 C.7)")
    ap.add_argument("--out", type=Path, default=REPORT_DIR)
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--update-counterexamples", action="store_true",
                    help="overwrite stored counterexamples with the ones found now")
    a = ap.parse_args(argv)
    cfg = SearchConfig.quick() if a.quick else SearchConfig.full() if a.full else SearchConfig()
    mode = "quick" if a.quick else "full" if a.full else "default"
    t0 = time.time()
    print(f"theory: checking appendix C claims ({mode} budgets)")
    res = run_all(cfg, a.claims, save=a.update_counterexamples)
    secs = time.time() - t0
    write_report(res, cfg, out_dir=a.out, seconds=secs, mode=mode, plots=not a.no_plots)
    print()
    print_table(res)
    print(f"\nwrote {a.out / 'claims.md'} and claims.json ({time.time() - t0:.0f} s)")
    return res


if __name__ == "__main__":
    main()
