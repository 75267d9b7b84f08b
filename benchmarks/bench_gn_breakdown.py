"""Where a Gauss-Newton train step's time goes, component by component, against an Adam step.

Each component of DH-KFAC's Gauss-Newton step (``training.kfac.preconditioner = gauss_newton``) is
traced as its own ``tf.function`` on the same hedger and batches and timed alone (median of
``--repeats`` calls after a warm-up):

* ``forward + gradient``: the forward pass and the loss gradient on the whole batch (what an Adam
  step computes; nothing is recorded on the whole batch, as in the train step);
* ``Jacobian rows``: the same, plus the recorded pass over the first ``jacobian_rows`` paths and its
  backward pass of the rows' cotangents (computed from the whole batch's outputs), the per-path
  gradients and the damping metric's statistics;
* ``Woodbury solve``: Gram matrix, Cholesky factor and direction from those rows (float64);
* ``line model``: one forward-mode pass over ``curvature_paths`` paths along a direction, or
  (``jvp_method: finite_difference``) one plain forward pass at the moved weights;
* ``forward``: one forward pass of the batch (what judging a step costs).

The whole train step of each optimizer is timed too; components overlap (the rows include a forward
pass and gradient), so the parts are read as increments over their predecessor.

Usage (repo root, project venv; one column per config):
    .venv/bin/python benchmarks/bench_gn_breakdown.py --config configs/suite/quickstart.yaml \\
        configs/suite/ntb_entropic_gbm.yaml [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import report
from optimizer_bench import protocol as benchmark
from deephedge_tf.config import load_config
from deephedge_tf.optimizers import woodbury
from deephedge_tf.optimizers.blocks import stack
from deephedge_tf.optimizers.train_step import (directional_curvature, finite_difference_curvature, first_paths,
                                                rows_pass)
from deephedge_tf.builders import build_optimizer
from deephedge_tf.training import build_parts, datasets


def median_ms(fn, batches, repeats: int) -> float:
    fn(batches[0])  # trace
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        out = fn(batches[k % len(batches)])
        tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


COMPONENTS = ("Adam train step", "Gauss-Newton train step (forward-mode line model)",
              "Gauss-Newton train step, finite-difference line model",
              "forward + gradient", "... + Jacobian rows", "Woodbury solve (Gram, Cholesky, direction)",
              "line model (forward-mode)", "line model (finite difference)", "forward (judging the step)")


def breakdown(config: str, repeats: int) -> tuple[dict, str]:
    """Median ms of each of :data:`COMPONENTS` on one task config, and a line describing its sizes."""
    adam_cfg = load_config(config)
    gauss_newton = ["training.kfac.preconditioner=gauss_newton"]
    cfg = load_config(config, overrides=benchmark._kfac_overrides(
        1.0, gauss_newton + ["training.kfac.jvp_method=forward_mode"]))
    parts = build_parts(cfg)
    train, _ = datasets(cfg, parts)
    batches = [train[i] for i in range(min(4, len(train)))]
    times = {}

    adam = benchmark._Runner(adam_cfg, parts, build_optimizer(adam_cfg), None, batches[0], None)
    times["Adam train step"] = median_ms(adam.train_step, batches, repeats)
    gn = benchmark._Runner(cfg, parts, build_optimizer(cfg), None, batches[0], None)
    times["Gauss-Newton train step (forward-mode line model)"] = median_ms(gn.train_step, batches, repeats)
    fd_cfg = load_config(config, overrides=benchmark._kfac_overrides(
        1.0, gauss_newton + ["training.kfac.jvp_method=finite_difference"]))
    fd = benchmark._Runner(fd_cfg, parts, build_optimizer(fd_cfg), None, batches[0], None)
    times["Gauss-Newton train step, finite-difference line model"] = median_ms(fd.train_step, batches, repeats)
    del fd

    hedger, opt = gn.hedger, gn.optimizer
    variables = hedger.trainable_variables
    seed = tf.constant([0, 7], tf.int64)

    def forward(batch):
        with tf.GradientTape() as tape:
            out = hedger.unroll(batch, training=True)
            loss = hedger._loss(out)
        return tape.gradient(loss, variables), out

    @tf.function
    def forward_gradient(batch):
        return forward(batch)[0]

    @tf.function
    def rows(batch):
        # The train step's own rows pass: the cotangents from the whole batch's outputs, back-propagated
        # through a pass recorded over the first jacobian_rows paths.
        grads, out = forward(batch)
        terms = hedger._curvature_terms(out, batch)
        factor = rows_pass(hedger, terms, lambda n: hedger._terms_of(first_paths(batch, n)), opt.jacobian_rows, seed)
        return grads, factor[0]

    fixed_grads, fixed_rows = rows(batches[0])
    by_name = {b.name: b for b in opt.kronecker_blocks}
    index = {id(v): i for i, v in enumerate(variables)}
    fixed_stacked = {name: stack(by_name[name], [fixed_grads[index[id(v)]] for v in opt.block_variables(name)])
                     for name in fixed_rows}
    lam = tf.constant(1e-3, tf.float64)

    @tf.function
    def solve(_):
        return woodbury.solve(woodbury.factorise(fixed_rows, lam), fixed_stacked, lam)[0]

    @tf.function
    def line_model(batch):
        def forward():
            return hedger._terms_of(first_paths(batch, hedger.curvature_paths))

        return directional_curvature(hedger, forward, variables, fixed_grads)

    # On the first batch only: the outputs at w come with the train step's own forward pass, so they are
    # computed once here, outside the timed function.
    fixed_batch = batches[0]
    base_terms = hedger._terms_of(first_paths(fixed_batch, hedger.curvature_paths))

    @tf.function
    def finite_difference_line_model():
        def forward():
            return hedger._terms_of(first_paths(fixed_batch, hedger.curvature_paths))

        return finite_difference_curvature(hedger, forward, variables, fixed_grads, base_terms)

    @tf.function
    def forward_only(batch):
        return hedger._loss(hedger.unroll(batch, training=True))

    times["forward + gradient"] = median_ms(forward_gradient, batches, repeats)
    times["... + Jacobian rows"] = median_ms(rows, batches, repeats)
    times["Woodbury solve (Gram, Cholesky, direction)"] = median_ms(solve, batches, repeats)
    times["line model (forward-mode)"] = median_ms(line_model, batches, repeats)
    times["line model (finite difference)"] = median_ms(lambda _: finite_difference_line_model(), batches, repeats)
    times["forward (judging the step)"] = median_ms(forward_only, batches, repeats)
    line_paths = hedger.curvature_paths or cfg.training.batch_size
    sizes = (f"batch {cfg.training.batch_size}, T = {cfg.time.steps}, "
             f"{sum(int(np.prod(v.shape)) for v in variables)} weights, {opt.jacobian_rows} Jacobian rows, "
             f"line model on {line_paths} paths")
    return times, sizes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["configs/suite/quickstart.yaml"],
                    help="task configs, one column each")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--write", metavar="FILE")
    args = ap.parse_args(argv)
    if len(set(args.config)) != len(args.config):
        ap.error("--config: each config once")
    results = []  # (times, sizes) per config, in order (one process: earlier graphs stay in memory)
    for config in args.config:
        results.append(breakdown(config, args.repeats))
        adam_ms = results[-1][0]["Adam train step"]
        for name, ms in results[-1][0].items():
            print(f"{config}: {name}: {ms:.0f} ms ({ms / adam_ms:.2f} x Adam)", flush=True)
    names = [str(Path(c).with_suffix("")) for c in args.config]
    rows = []
    for component in COMPONENTS:
        row = [component]
        for times, _ in results:
            row.append(f"{times[component]:.0f} ms ({times[component] / times['Adam train step']:.2f})")
        rows.append(row)
    cmd = f"python benchmarks/bench_gn_breakdown.py --config {' '.join(args.config)}"
    details = ("; ".join(f"{n}: {sizes}" for n, (_, sizes) in zip(names, results))
               + f"; median of {args.repeats} calls; each component its own tf.function; in brackets: / Adam step.")
    text = report.section("Gauss-Newton train step: time by component", cmd, details,
                          ["component"] + names, ["---"] + ["---:"] * len(names), rows)
    report.publish(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
