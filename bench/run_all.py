"""Run every benchmark: ``python -m bench.run_all [--size-mib 1024] [--count 1000] [--quick]``.

Results go to bench/results/: transfer_<size>mib.json, register.json, compat.json, export.json,
lifecycle.json, validate.json (validate_small.json with --quick).
Exit status 1 if a target failed (the register benchmark only reports numbers).
"""

from __future__ import annotations

import argparse
import sys

from bench import (
    bench_compat,
    bench_export,
    bench_lifecycle,
    bench_register,
    bench_transfer,
    bench_validate,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="transfer adapter size")
    p.add_argument("--stores", default="local,s3")
    p.add_argument("--repeats", type=int, default=2, help="transfer rounds per store")
    p.add_argument("--count", type=int, default=1000, help="versions to register")
    p.add_argument("--push-count", type=int, default=100)
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--quick", action="store_true",
                   help="smoke sizes: 64 MiB transfer, 1,000 compat versions, tiny export")
    args = p.parse_args(argv)
    size = 64 if args.quick else args.size_mib

    transfer = bench_transfer.run(size, args.stores.split(","), repeats=args.repeats)
    bench_register.run(args.count, args.push_count, args.backends.split(","))
    bench_compat.main(["--versions", "1000" if args.quick else "10000"])
    export_ok = bench_export.main(["--small"] if args.quick else ["--repeats", "2"]) == 0
    lifecycle = bench_lifecycle.run(100 if args.quick else args.count,
                                    200 if args.quick else 2000,
                                    100 if args.quick else 1000, 50, None)
    # One thread: on this 2-core machine two OpenMP threads were 2.5x slower (see README).
    bench_validate.main(["--small"] if args.quick else ["--threads", "1", "--text-chars", "12"])
    targets = {**transfer["targets"], **lifecycle["targets_met"]}
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if transfer["pass"] and export_ok and all(lifecycle["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
