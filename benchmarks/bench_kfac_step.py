"""Where a DH-KFAC train step's time goes: Adam and DH-KFAC variants on one config, in one process.

Each variant is the config with ``training.optimizer = dhkfac`` (as `deephedge benchmark kfac-vs-adam`
runs it) plus its own ``--set``-style overrides; ``adam`` is the config's Adam.  Every variant's train
step is traced once (reported as the first call), then timed over ``--repeats`` steps that cycle
through a few fixed batches (mean and median; a variant with ``curvature_period = 2`` alternates
cheap and full steps, so its mean is the per-step cost).  Ratios are to Adam in the same run.

Usage (repo root, project venv):
    .venv/bin/python benchmarks/bench_kfac_step.py --config configs/cliquet_small.yaml \\
        --variant adam --variant "" --variant training.kfac.step_model=kronecker [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import report
from optimizer_bench import protocol as benchmark
from deephedge_tf.config import load_config
from deephedge_tf.builders import build_optimizer
from deephedge_tf.training import build_parts, datasets


def measure(config: str, variant: str, parts, batches, repeats: int) -> tuple[float, np.ndarray]:
    """(first call s, per-step times s) of one variant (``"adam"`` or comma-separated overrides)."""
    if variant == "adam":
        cfg = load_config(config)
    else:
        extra = [s for s in variant.split(",") if s]
        cfg = load_config(config, overrides=benchmark._kfac_overrides(1.0, extra))
    runner = benchmark._Runner(cfg, parts, build_optimizer(cfg), None, batches[0], None)
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        float(runner.train_step(batches[k % len(batches)])["loss"])
        times.append(time.perf_counter() - t0)
    return runner.first_call_s, np.asarray(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/cliquet_small.yaml")
    ap.add_argument("--variant", action="append", required=True,
                    help="'adam', '' (DH-KFAC as configured) or comma-separated KEY=VALUE overrides")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--write", metavar="FILE")
    args = ap.parse_args(argv)
    if "adam" not in args.variant:
        ap.error("--variant adam is required (the ratios are to Adam)")
    base = load_config(args.config)
    parts = build_parts(base)
    train, _ = datasets(base, parts)
    batches = [train[i] for i in range(min(6, len(train)))]
    rows = {}
    for variant in args.variant:
        first, times = measure(args.config, variant, parts, batches, args.repeats)
        rows[variant] = (first, times)
        print(f"{variant or 'DH-KFAC as configured'}: first call {first:.0f} s, mean {times.mean() * 1e3:.0f} ms, "
              f"median {np.median(times) * 1e3:.0f} ms", flush=True)
    adam_mean = rows["adam"][1].mean()
    cmd = f"python benchmarks/bench_kfac_step.py --config {args.config} " + " ".join(
        f'--variant "{v}"' for v in args.variant)
    text = report.section(
        "DH-KFAC train step: time by component", cmd,
        f"batch {base.training.batch_size} paths, T = {base.time.steps}; DH-KFAC variants are "
        f"`training.kfac` of the config plus the overrides shown; mean and median of {args.repeats} steps.",
        ["variant", "first call", "mean step", "median step", "mean / Adam's"],
        ["---", "---:", "---:", "---:", "---:"],
        [[f"`{v}`" if v else "DH-KFAC as configured", f"{f:.0f} s", f"{t.mean() * 1e3:.0f} ms",
          f"{np.median(t) * 1e3:.0f} ms", f"{t.mean() / adam_mean:.2f}"] for v, (f, t) in rows.items()])
    report.publish(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
