"""Steps of DH-KFAC variants to a suite run's targets, without rerunning Adam: the harness settings are
chosen with.

For one task of the suite manifest and some seeds, each variant (``NAME:KEY=VALUE,...`` with
``training.kfac.`` keys, e.g. ``p075:metric_power=0.75``; ``default:`` for the defaults) trains from the
suite's initial weights on the suite's fresh-path stream, validated every ``eval_every`` steps on the
suite's validation paths, until the target that Adam set for that seed in an earlier suite run
(``--targets DIR``, the ``--out`` of `deephedge benchmark suite`).  Prints one line per variant and
seed: steps to the target (and their ratio to Adam's steps there), the best validation loss, the
median step time and the rejected steps.  Steps are exact; times are only comparable within one run
on a quiet machine (use the suite or bench_kfac_step.py for those).

Usage (repo root, project venv):
    .venv/bin/python benchmarks/kfac_to_target.py --task cliquet_small --seeds 0 1 \\
        --targets benchmarks/results/suite_new_defaults --steps 150 default: p075:metric_power=0.75
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from optimizer_bench import protocol as benchmark
from optimizer_bench.suite import DEFAULT_MANIFEST, load_manifest
from deephedge_tf.builders import build_optimizer
from deephedge_tf.config import load_config
from deephedge_tf.errors import ConfigError
from deephedge_tf.training import build_parts, datasets


def parse_variant(text: str) -> tuple[str, list]:
    """``"name:k=v,k2=v2"`` -> ``("name", ["training.kfac.k=v", "training.kfac.k2=v2"])``."""
    name, sep, pairs = text.partition(":")
    if not name or not sep:
        raise ConfigError("variant", text, "NAME:KEY=VALUE,... (training.kfac keys; 'default:' for none)")
    overrides = [f"training.kfac.{p}" for p in pairs.split(",") if p]
    if any("=" not in o for o in overrides):
        raise ConfigError(f"variant {name}", pairs, "comma-separated KEY=VALUE pairs")
    return name, overrides


def suite_targets(results_dir: Path, task: str) -> dict:
    """``{seed: (target, Adam's steps to it)}`` of ``task`` in a suite run's output directory."""
    path = results_dir / task / "results.json"
    if not path.is_file():
        raise ConfigError("--targets", str(results_dir), f"a suite run's --out with {task}/results.json")
    per_seed = json.loads(path.read_text())["summary"]["per_seed"]
    return {r["seed"]: (r["target"], r["adam_steps_to_target"]) for r in per_seed}


def add_task_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments that pick a suite task, its seeds, the targets and the step budget."""
    ap.add_argument("--task", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--targets", required=True, type=Path, help="a suite run's --out directory")
    ap.add_argument("--steps", type=int, default=150, help="budget per run")
    ap.add_argument("--suite", default=str(DEFAULT_MANIFEST))


@dataclasses.dataclass
class TaskRuns:
    """What every run on a suite task shares: the task, ``{seed: (target, Adam's steps)}``, its config
    and parts, a warm-up batch, and per seed the suite's initial weights and validation batches."""

    task: object
    targets: dict
    config: object
    parts: object
    warm: object
    inits: dict
    valids: dict


def load_task_runs(ap: argparse.ArgumentParser, args) -> TaskRuns:
    """:class:`TaskRuns` for ``args`` of :func:`add_task_arguments` (``ap.error`` on an unknown task or a
    seed without a target)."""
    task = load_manifest(args.suite).tasks.get(args.task)
    if task is None:
        ap.error(f"--task: not in {args.suite}")
    targets = suite_targets(args.targets, args.task)
    missing = [s for s in args.seeds if s not in targets]
    if missing:
        ap.error(f"--seeds: no target for {missing} in {args.targets}")
    base = load_config(task.config)
    parts = build_parts(base)
    warm = datasets(base, parts)[0][0]
    # As the suite: initial weights and validation paths first (building a model between a traced
    # step's calls makes its next call slow).
    inits = {s: benchmark._initial_weights(dataclasses.replace(base, seed=s), parts, warm) for s in args.seeds}
    valids = {s: list(datasets(dataclasses.replace(base, seed=s), parts)[1]) for s in args.seeds}
    return TaskRuns(task, targets, base, parts, warm, inits, valids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_task_arguments(ap)
    ap.add_argument("variants", nargs="+", help="NAME:KEY=VALUE,... (training.kfac keys)")
    args = ap.parse_args(argv)
    runs = load_task_runs(ap, args)
    task, targets, parts, warm, inits, valids = runs.task, runs.targets, runs.parts, runs.warm, runs.inits, runs.valids
    variants = [parse_variant(v) for v in args.variants]
    for name, overrides in variants:
        cfg0 = load_config(task.config, overrides=benchmark._kfac_overrides(1.0, overrides))
        runner = benchmark._Runner(cfg0, parts, build_optimizer(cfg0), None, warm, None)
        for s in args.seeds:
            target, adam_steps = targets[s]
            run = benchmark._train(runner, dataclasses.replace(cfg0, seed=s), parts, inits[s], None, args.steps,
                                   task.eval_every, valids[s], target=target)
            hit = benchmark.first_at_or_below(run["curve"], target)
            steps = hit["step"] if hit else None
            ratio = f"{steps / adam_steps:.3f}" if steps and adam_steps else "-"
            best = min(p["val_loss"] for p in run["curve"])
            print(f"{args.task} seed {s} {name}: steps {steps} (x Adam {ratio}), best {best:.5g}, target "
                  f"{target:.5g}, step {run['step_time_s']['median'] * 1e3:.0f} ms, rejected "
                  f"{int(runner.optimizer.rejected_steps.numpy())}", flush=True)
        del runner
    return 0


if __name__ == "__main__":
    sys.exit(main())
