"""Wall time of whole `latentdiff generate` processes: the normal interpreter exit vs ``cli.entry``'s
exit without teardown, interleaved (old, new, old, new, ...), medians. Each process loads the model,
writes one PNG and exits; the file cache is warm after the first pair.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_start.py --repeats 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

OLD = [sys.executable, "-c", "import sys; from latentdiff.cli import main; sys.exit(main())"]
NEW = [sys.executable, "-m", "latentdiff.cli"]  # runs cli.entry(), as the console script does


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--model", default="emoji")
    args = p.parse_args(argv)
    times = {"old_exit": [], "entry": []}
    loads = []
    with tempfile.TemporaryDirectory() as out:
        gen = ["generate", "red apple", "--seed", "0", "--model", args.model, "--out", out]
        for _ in range(args.repeats):
            for name, cmd in (("old_exit", OLD), ("entry", NEW)):
                loads.append(os.getloadavg()[0])
                t0 = time.perf_counter()
                subprocess.run(cmd + gen, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    result = {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for k, v in times.items()}
    result["load"] = [min(loads), max(loads)]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
