"""Peak memory of a train step for a large policy: Adam against the Gauss-Newton step.

Each variant runs in its own process: it builds the hedger of ``--config`` with ``policy.width =
--width`` (about 1e6 weights at width 250 for the recurrent policy), traces and runs one train step
(tracing holds hundreds of MB of graph that are not the step's), then polls the resident size while
``--steps`` more steps run.  The number that counts is the process peak (the first Gauss-Newton step's
memory stays resident): each variant's increment over Adam's peak, and that increment per Jacobian row
and weight, are reported.  The Gauss-Newton step's bound is ``jacobian_rows x P`` floats of rows plus float64
copies of the largest block's rows while the Gram matrix is formed (BENCHMARKS.md, "Memory").

Usage (repo root, project venv):
    .venv/bin/python benchmarks/bench_gn_memory.py --config configs/suite/quickstart.yaml --width 250 \\
        --batch 512 [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import subprocess
import sys

import report

VARIANTS = {
    "Adam": [],
    "Gauss-Newton (default rows)": ["training.optimizer=dhkfac", "training.kfac.preconditioner=gauss_newton"],
    "Gauss-Newton": ["training.optimizer=dhkfac", "training.kfac.preconditioner=gauss_newton",
                     "training.kfac.jacobian_rows=64"],
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


class RssSampler:
    """The largest resident size seen while active, polled every millisecond in a thread: the train
    step's transient memory (rows, Gram matrix) is freed when it returns, so only polling sees it."""

    def __enter__(self):
        import threading

        self.peak, self._stop = rss_mb(), threading.Event()

        def poll():
            while not self._stop.wait(0.001):
                self.peak = max(self.peak, rss_mb())

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def child(config: str, overrides: list[str], steps: int) -> dict:
    """Runs in the subprocess: resident memory before the timed steps (model traced and one step run)
    and the largest seen during them."""
    import numpy as np
    import tensorflow as tf

    from deephedge_tf.config import load_config
    from deephedge_tf.training import build_parts, datasets, make_hedger

    cfg = load_config(config, overrides)
    parts = build_parts(cfg)
    train, _ = datasets(cfg, parts)
    hedger = make_hedger(cfg, parts)
    hedger.build_from_batch(train[0])
    step = tf.function(hedger.train_step)
    float(step(train[0])["loss"])  # trace (graph memory stays; not the step's)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the first step freed but malloc kept is not "before"
    before = rss_mb()
    with RssSampler() as sampler:
        for k in range(steps):
            float(step(train[(k + 1) % len(train)])["loss"])
    weights = int(sum(np.prod(v.shape) for v in hedger.trainable_variables))
    rows = getattr(hedger.optimizer, "jacobian_rows", None) if cfg.training.optimizer == "dhkfac" else None
    return dict(weights=weights, rows=rows, before_mb=before, step_mb=sampler.peak, peak_mb=peak_mb())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/suite/quickstart.yaml")
    ap.add_argument("--width", type=int, default=250)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--write", metavar="FILE")
    args = ap.parse_args(argv)
    common = [f"policy.width={args.width}", f"training.batch_size={args.batch}"]
    if args.child is not None:
        print(json.dumps(child(args.config, common + args.child, args.steps)))
        return 0
    rows, adam_peak = [], None
    for name, overrides in VARIANTS.items():
        cmd = [sys.executable, __file__, "--config", args.config, "--width", str(args.width), "--batch",
               str(args.batch), "--steps", str(args.steps), "--child", *overrides]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            raise SystemExit(f"variant {name!r} failed (exit {done.returncode})")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, r, flush=True)
        label = name if r["rows"] is None else f"{name}, {r['rows']} Jacobian rows"
        if r["rows"] is None:
            adam_peak = r["peak_mb"]
        above = "-" if r["rows"] is None else f"{r['peak_mb'] - adam_peak:.0f} MB"
        per = "-" if r["rows"] is None else f"{(r['peak_mb'] - adam_peak) * 1e6 / (r['rows'] * r['weights']):.1f}"
        rows.append([label, f"{r['weights']:,}", f"{r['before_mb']:.0f} MB", f"{r['step_mb']:.0f} MB",
                     f"{r['peak_mb']:.0f} MB", above, per])
    cmd = (f"python benchmarks/bench_gn_memory.py --config {args.config} --width {args.width} "
           f"--batch {args.batch}")
    text = report.section("Peak memory of a train step, large policy", cmd,
                          f"policy.width {args.width}, batch {args.batch}; resident memory after tracing and "
                          f"one train step, the largest seen during {args.steps} more (polled every ms), and the "
                          "process's peak (tracing included); each variant in its own process.",
                          ["optimizer", "weights", "resident before", "largest during the steps", "process peak",
                           "peak above Adam", "bytes per row and weight"],
                          ["---", "---:", "---:", "---:", "---:", "---:", "---:"],
                          rows)
    report.publish(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
