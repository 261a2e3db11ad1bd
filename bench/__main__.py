"""``python -m bench [NAME ...] [-- ARGS]`` (``./dev bench``): run benchmarks by name, all by default.

    ./dev bench                  # core, job, backfill, baselines, serving, faults, one after another
    ./dev bench core --quick     # one benchmark; the remaining arguments are its own (--help lists them)

Each writes ``bench/results/<name>.json`` (and PNG plots where a person would rather look).
"""

from __future__ import annotations

import importlib
import subprocess
import sys

BENCHMARKS = ("core", "job", "backfill", "baselines", "serving", "faults")


def main(argv: list[str]) -> int:
    if argv and argv[0] in BENCHMARKS:
        name, rest = argv[0], argv[1:]
        importlib.import_module(f"bench.{name}")  # fail here, with the import error, before a long run
        return subprocess.call([sys.executable, "-m", f"bench.{name}", *rest])
    if argv:
        print(f"unknown benchmark {argv[0]!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = [name for name in BENCHMARKS if subprocess.call([sys.executable, "-m", f"bench.{name}"]) != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
