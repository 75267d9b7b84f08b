"""Training-batch assembly: ``make_batch`` run eagerly against the traced graph ``PathBatches`` uses.

For each config, one training batch of its size: the time to simulate the paths, to assemble the batch
dict from them eagerly (``deephedge_tf.features.make_batch``, about a thousand small ops dispatched one
by one) and as the one traced graph of ``PathBatches``, and a whole ``PathBatches`` item.  Median of
``--repeats`` calls after a warm-up (the trace), one process, so the ratios are comparable.

Usage (repo root, project venv):
    .venv/bin/python benchmarks/bench_batches.py --config configs/suite/quickstart.yaml \\
        configs/suite/cliquet_small.yaml [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import report
from deephedge_tf.config import load_config
from deephedge_tf.features import make_batch
from deephedge_tf.training import build_parts, datasets


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: traces where there is something to trace
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def measure(config: str, repeats: int) -> list:
    cfg = load_config(config)
    parts = build_parts(cfg)
    train, _ = datasets(cfg, parts)
    paths = train.market.simulate(train.batch_size, start=0, seed=train.seed)
    simulate = median_ms(lambda: train.market.simulate(train.batch_size, start=0, seed=train.seed), repeats)
    eager = median_ms(lambda: make_batch(paths, train.derivative, train.instruments), repeats)
    traced = median_ms(lambda: train._batch(paths), repeats)
    item = median_ms(lambda: train[0], repeats)
    return [config, f"{train.batch_size} x {paths.num_steps}", f"{simulate:.1f}", f"{eager:.1f}", f"{traced:.1f}",
            f"{eager / traced:.1f}x", f"{item:.1f}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", required=True)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--write", metavar="FILE", help="append a results section to FILE")
    args = ap.parse_args(argv)
    rows = [measure(c, args.repeats) for c in args.config]
    cmd = "python benchmarks/bench_batches.py --config " + " ".join(args.config)
    text = report.section("Training-batch assembly", cmd, f"median of {args.repeats} after a warm-up; ms per batch.",
                          ["config", "paths x steps", "simulate", "make_batch eager", "make_batch traced",
                           "saving", "PathBatches item"], ["---", "---", "---:", "---:", "---:", "---:", "---:"],
                          rows)
    report.publish(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
