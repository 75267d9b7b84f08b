"""The optimizer suite: ``deephedge benchmark suite --out DIR [--tasks ...] [--seeds ...]``.

Runs the kfac-vs-adam protocol of :mod:`optimizer_bench.protocol` on every task of a suite manifest
(default ``configs/suite/suite.yaml``: task configs, per-task budgets and the goal) and writes

* ``DIR/<task>/results.json`` and ``DIR/<task>/learning_curves.png``: each task's full results;
* ``DIR/suite.json``: one row per task and seed (steps and wall time of both optimizers to the target,
  their ratios, whether the goal is met) and the per-step times;
* ``DIR/suite.md``: the same table in Markdown, for BENCHMARKS.md;
* ``DIR/learning_curves.png``: validation loss against training steps, one panel per task.

A task's DH-KFAC runs use the optimizer's defaults (the task configs carry no ``training.kfac``
section; the manifest refuses one) unless ``--kfac-set`` overrides them for the whole suite.  ``--compare
NAME KEY=VALUE ...`` runs another DH-KFAC rule beside the default against the same Adam targets, in the
same run (its rows carry ``rule = NAME``), e.g. the paper's algorithm: ``--compare paper
training.kfac.preconditioner=kronecker training.kfac.ggn_mode=exact`` (the objective's curvature alone).

``--jobs N`` runs ``N`` tasks at a time, each in its own process pinned to its share of the CPU cores
(TensorFlow's thread pools sized to it), logging to ``DIR/<task>.log``; both optimizers of a task run in
the same process, so each task's ratios compare like with like.  ``--jobs 2`` on two cores is how the
documented full run takes about an hour.

Manifest keys: ``seeds``, ``target_factor``, ``goal: {step_ratio, wall_ratio}`` and ``tasks: {name:
{config, adam_steps, kfac_steps, sweep_steps, lrs, eval_every (10), goal, target_factor (overrides)}}``;
``config`` is relative to the manifest's folder.  A task whose loss has little room between its start
and Adam's best (a policy anchored on a good baseline) needs a tighter ``target_factor``.

    >>> manifest = load_manifest()          # configs/suite/suite.yaml
    >>> sorted(manifest.tasks)[:2], manifest.goal_for("cliquet_small")["step_ratio"]
    (['buehler_heston_cvar', 'cliquet_small'], 0.2)
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from optimizer_bench.protocol import _int_at_least, _positive
from deephedge_tf.errors import ConfigError, DeepHedgeError

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "configs" / "suite" / "suite.yaml"
_TASK_KEYS = {"config", "adam_steps", "kfac_steps", "sweep_steps", "lrs", "eval_every", "goal", "target_factor"}
_GOAL_KEYS = {"step_ratio", "wall_ratio"}


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    config: Path
    adam_steps: int
    kfac_steps: int
    sweep_steps: int
    lrs: tuple
    eval_every: int = 10
    goal: dict = dataclasses.field(default_factory=dict)
    target_factor: Optional[float] = None  # None: the suite's


@dataclasses.dataclass(frozen=True)
class Manifest:
    path: Path
    seeds: tuple
    target_factor: float
    goal: dict
    tasks: dict  # name -> Task, in manifest order

    def goal_for(self, task: str) -> dict:
        """The suite's goal with the task's own entries on top."""
        return {**self.goal, **self.tasks[task].goal}


def _goal(key, value):
    if not isinstance(value, dict) or not set(value) <= _GOAL_KEYS:
        raise ConfigError(key, value, f"a mapping with keys among {sorted(_GOAL_KEYS)}")
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"{key}.{k}", v, "a number > 0")
    return {k: float(v) for k, v in value.items()}


def _target_factor(key, value):
    if not _positive(key, value) > 1.0:
        raise ConfigError(key, value, "a number > 1")
    return float(value)


def load_manifest(path=DEFAULT_MANIFEST) -> Manifest:
    """Reads and validates a suite manifest (see the module doc); every error names the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--suite", str(path), "an existing suite manifest (YAML)")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not set(raw) <= {"seeds", "target_factor", "goal", "tasks"}:
        raise ConfigError("suite", raw if not isinstance(raw, dict) else sorted(raw),
                          "a mapping with keys seeds, target_factor, goal, tasks")
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError("suite.seeds", seeds, "a non-empty list of integers")
    factor = _target_factor("suite.target_factor", raw.get("target_factor", 1.01))
    goal = _goal("suite.goal", raw.get("goal", {"step_ratio": 0.25, "wall_ratio": 0.5}))
    if set(goal) != _GOAL_KEYS:
        raise ConfigError("suite.goal", goal, f"both of {sorted(_GOAL_KEYS)}")
    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, dict) or not tasks_raw:
        raise ConfigError("suite.tasks", tasks_raw, "a non-empty mapping of task names to task entries")
    tasks = {}
    for name, entry in tasks_raw.items():
        key = f"suite.tasks.{name}"
        if not isinstance(entry, dict) or not set(entry) <= _TASK_KEYS or "config" not in entry:
            raise ConfigError(key, entry, f"a mapping with 'config' and keys among {sorted(_TASK_KEYS)}")
        config = path.parent / str(entry["config"])
        if not config.is_file():
            raise ConfigError(f"{key}.config", entry["config"], f"a config file relative to {path.parent}")
        lrs = entry.get("lrs", [1e-3, 3e-3, 1e-2])
        if not isinstance(lrs, list) or not lrs:
            raise ConfigError(f"{key}.lrs", lrs, "a non-empty list of numbers > 0")
        tasks[name] = Task(
            name=name, config=config,
            adam_steps=_int_at_least(f"{key}.adam_steps", entry.get("adam_steps", 600), 1),
            kfac_steps=_int_at_least(f"{key}.kfac_steps", entry.get("kfac_steps", 200), 1),
            sweep_steps=_int_at_least(f"{key}.sweep_steps", entry.get("sweep_steps", 150), 1),
            lrs=tuple(_positive(f"{key}.lrs", x) for x in lrs),
            eval_every=_int_at_least(f"{key}.eval_every", entry.get("eval_every", 10), 1),
            goal=_goal(f"{key}.goal", entry.get("goal", {})),
            target_factor=(None if entry.get("target_factor") is None
                           else _target_factor(f"{key}.target_factor", entry["target_factor"])))
    return Manifest(path=path, seeds=tuple(seeds), target_factor=float(factor), goal=goal, tasks=tasks)


def _check_task_config(task: Task) -> None:
    """A suite task must leave DH-KFAC at its defaults: no ``training.kfac`` section."""
    raw = yaml.safe_load(task.config.read_text()) or {}
    training = raw.get("training") or {}
    if "kfac" in training:
        raise ConfigError(f"{task.config.name}: training.kfac", training["kfac"],
                          "no kfac section in a suite task (DH-KFAC runs with its defaults; use --kfac-set "
                          "to change them for the whole suite)")


def select(manifest: Manifest, tasks: Optional[Sequence[str]]) -> list:
    """The manifest's tasks named in ``tasks`` (all when ``None``), in manifest order."""
    if tasks is None:
        return list(manifest.tasks.values())
    unknown = [t for t in tasks if t not in manifest.tasks]
    if unknown:
        raise ConfigError("--tasks", unknown, f"tasks of {manifest.path.name}: {', '.join(manifest.tasks)}")
    return [manifest.tasks[t] for t in manifest.tasks if t in tasks]


def suite_rows(task: Task, results: dict, goal: dict) -> list:
    """One row per seed and DH-KFAC rule of a task's kfac-vs-adam results, judged against ``goal``
    (the default rule's rows first)."""
    from optimizer_bench.protocol import DEFAULT_RULE

    summaries = [(DEFAULT_RULE, results["summary"])]
    summaries += [(name, c["summary"]) for name, c in results.get("compare", {}).items()]
    return [row for rule, summary in summaries for row in _rule_rows(task, results, summary, goal, rule)]


def _rule_rows(task: Task, results: dict, summary: dict, goal: dict, rule: str) -> list:
    rows = []
    for r in summary["per_seed"]:
        step_ok = r["step_ratio"] is not None and r["step_ratio"] <= goal["step_ratio"]
        wall_ok = r["wall_ratio"] is not None and r["wall_ratio"] <= goal["wall_ratio"]
        rows.append(dict(task=task.name, rule=rule, seed=r["seed"], target=r["target"],
                         adam_lr=results["sweep"]["best_lr"],
                         adam_steps=r["adam_steps_to_target"], adam_wall_s=r["adam_wall_s_to_target"],
                         kfac_steps=r["kfac_steps_to_target"], kfac_wall_s=r["kfac_wall_s_to_target"],
                         step_ratio=r["step_ratio"], wall_ratio=r["wall_ratio"],
                         kfac_best_val_loss=r["kfac_best_val_loss"], goal_steps=step_ok, goal_wall=wall_ok,
                         goal_met=step_ok and wall_ok))
    return rows


def run_suite(out, *, manifest=DEFAULT_MANIFEST, tasks: Optional[Sequence[str]] = None,
              seeds: Optional[Sequence[int]] = None, kfac_overrides: Sequence[str] = (),
              compare: Optional[dict] = None, log: Optional[Callable[[str], None]] = None, jobs: int = 1) -> dict:
    """Runs the suite (see the module doc); returns the ``suite.json`` dict.  Raises
    :class:`ConfigError` for a bad manifest, task selection or task config before any training.

    ``jobs > 1`` runs that many tasks at a time, each in its own process on its own share of the CPU
    cores (:func:`run_tasks_in_parallel`): both optimizers of a task still run in one process on the same
    cores, so the ratios compare like with like."""
    from optimizer_bench.protocol import DEFAULTS, resolve_rules

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    chosen = select(m, tasks)
    seeds = tuple(m.seeds if seeds is None else seeds)
    jobs = _int_at_least("--jobs", jobs, 1)
    for task in chosen:
        _check_task_config(task)
        # Every rule of every task checked before the first task trains.
        resolve_rules(task.config, (), DEFAULTS["kfac_lr"], kfac_overrides, compare)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "a directory (this path is a file)")
    log = log or (lambda msg: None)
    if jobs > 1 and len(chosen) > 1:
        run_tasks_in_parallel(out, m, chosen, seeds, list(kfac_overrides), compare, jobs, log)
    else:
        for task in chosen:
            run_task(out, m, task.name, seeds, kfac_overrides, compare, log)
    return assemble_suite(out, manifest=m, tasks=[t.name for t in chosen])


def run_task(out, manifest, name: str, seeds, kfac_overrides=(), compare=None, log=None) -> dict:
    """One task of the suite: the kfac-vs-adam protocol with the manifest's budgets, results in
    ``out/<name>/``."""
    from optimizer_bench.protocol import kfac_vs_adam

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    task = m.tasks[name]
    log = log or (lambda msg: None)
    log(f"== suite task {task.name} ({task.config.name}), seeds {list(seeds)}")
    return kfac_vs_adam(task.config, Path(out) / task.name, seeds=tuple(seeds), adam_steps=task.adam_steps,
                        kfac_steps=task.kfac_steps, sweep_steps=task.sweep_steps, eval_every=task.eval_every,
                        target_factor=task.target_factor or m.target_factor, lrs=task.lrs,
                        kfac_overrides=list(kfac_overrides), compare=compare, log=log)


def core_slots(jobs: int) -> list:
    """The CPU cores this process may use, split into ``jobs`` disjoint sets (as equal as possible;
    fewer sets when there are fewer cores).  Linux only (``os.sched_getaffinity``); elsewhere ``jobs``
    empty sets (no pinning)."""
    import os

    if not hasattr(os, "sched_getaffinity"):
        return [set() for _ in range(jobs)]
    cores = sorted(os.sched_getaffinity(0))
    jobs = min(jobs, len(cores))
    return [set(cores[i::jobs]) for i in range(jobs)]


def run_tasks_in_parallel(out, manifest: Manifest, tasks, seeds, kfac_overrides, compare, jobs: int, log) -> None:
    """Runs ``tasks`` in ``jobs`` worker processes, in manifest order (list the longest tasks first:
    the time of a step is not known before it runs); each process is pinned to its own cores
    (:func:`core_slots`) with TensorFlow's thread pools sized to them, and writes its progress to
    ``out/<task>.log``.  Raises :class:`DeepHedgeError` naming the tasks whose process failed."""
    import os
    import queue
    import subprocess
    import threading

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pending = queue.Queue()
    for task in tasks:
        pending.put(task)
    harness = str(Path(__file__).resolve().parents[1])
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "from optimizer_bench.protocol import _stderr; from optimizer_bench.suite import run_task; "
            "a = json.loads(sys.argv[2]); run_task(a['out'], a['manifest'], a['task'], a['seeds'], "
            "a['kfac_overrides'], a['compare'], _stderr)")
    failed = []

    def worker(cores):
        env = dict(os.environ)
        if cores:
            env["TF_NUM_INTRAOP_THREADS"] = str(len(cores))
            env["TF_NUM_INTEROP_THREADS"] = "1"
        while True:
            try:
                task = pending.get_nowait()
            except queue.Empty:
                return
            args = json.dumps(dict(out=str(out), manifest=str(manifest.path), task=task.name, seeds=list(seeds),
                                   kfac_overrides=kfac_overrides, compare=compare))
            log(f"== suite task {task.name} started on cores {sorted(cores) or 'any'} (log: {out / task.name}.log)")
            with open(out / f"{task.name}.log", "w") as stream:
                rc = subprocess.call([sys.executable, "-c", code, harness, args], env=env, stdout=stream,
                                     stderr=subprocess.STDOUT,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
            log(f"== suite task {task.name} {'done' if rc == 0 else f'FAILED (exit {rc})'}")
            if rc != 0:
                failed.append(task.name)

    threads = [threading.Thread(target=worker, args=(cores,)) for cores in core_slots(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise DeepHedgeError(f"benchmark suite: task(s) {', '.join(failed)} failed; see "
                             + ", ".join(str(out / f"{name}.log") for name in failed))


def task_summary(task: Task, results: dict, goal: dict) -> dict:
    """A task's entry in ``suite.json["tasks"]``: goal, per-step times and learning curves of its
    kfac-vs-adam ``results``."""
    return dict(config=str(task.config), goal=goal, target_factor=results["target_factor"],
                total_wall_s=results["total_wall_s"], per_step_time=results["summary"]["per_step_time"],
                compare_per_step_time={name: c["summary"]["per_step_time"]
                                       for name, c in results.get("compare", {}).items()},
                first_call=results["first_call"],
                curves=[dict(optimizer=r["optimizer"], rule=r.get("rule"), seed=r["seed"], target=r["target"],
                             curve=[(p["step"], p["val_loss"]) for p in r["curve"]])
                        for r in results["runs"]])


def assemble_suite(out, *, manifest=DEFAULT_MANIFEST, tasks: Optional[Sequence[str]] = None) -> dict:
    """Writes ``suite.json``, ``suite.md`` and ``learning_curves.png`` in ``out`` from the per-task
    ``out/<task>/results.json`` of a suite run (:func:`run_suite` ends with this; ``deephedge benchmark
    suite --assemble`` runs it alone, e.g. on a run stopped before its last task).  Tasks without results
    are left out and named in ``missing``; the tasks' results must agree on seeds and overrides.
    Returns the ``suite.json`` dict."""
    from optimizer_bench.protocol import DEFAULT_RULE, _jsonable
    from deephedge_tf.files import write_atomic

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    chosen = select(m, tasks)
    out = Path(out)
    found, missing = {}, []
    for task in chosen:
        path = out / task.name / "results.json"
        if not path.is_file():
            missing.append(task.name)
            continue
        try:
            found[task.name] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--out {out}", str(path), f"a kfac-vs-adam results.json ({e})") from None
    if not found:
        raise ConfigError("--out", str(out), "a suite run's directory: no <task>/results.json for any of "
                          f"{', '.join(t.name for t in chosen)}")
    def setting(r):  # what one suite run shares across its tasks: seeds, --kfac-set, --compare
        return (list(r["seeds"]), r.get("rule_overrides", []),
                {k: c.get("rule_overrides") for k, c in r.get("compare", {}).items()})

    first = next(iter(found.values()))
    for name, r in found.items():
        if setting(r) != setting(first):
            raise ConfigError(f"--out {out}", name, "results of one suite run (same seeds, --kfac-set and "
                              f"--compare as {next(iter(found))}); got {setting(r)} vs {setting(first)}")
    rows, per_task = [], {}
    for task in chosen:
        if task.name in found:
            goal = m.goal_for(task.name)
            rows += suite_rows(task, found[task.name], goal)
            per_task[task.name] = task_summary(task, found[task.name], goal)
    seeds, kfac_overrides, compare = setting(first)
    summary = dict(benchmark="suite", manifest=str(m.path), seeds=seeds, kfac_overrides=kfac_overrides,
                   compare=compare, target_factor=m.target_factor, rows=rows, tasks=per_task, missing=missing,
                   goal_met=not missing and all(r["goal_met"] for r in rows if r["rule"] == DEFAULT_RULE))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "suite.json", (json.dumps(_jsonable(summary), indent=2) + "\n").encode())
    write_atomic(out / "suite.md", suite_markdown(summary).encode())
    plot_suite(summary, out / "learning_curves.png")
    return summary


def suite_markdown(summary: dict) -> str:
    """The suite table (one row per task, rule and seed) and per-step times, as Markdown."""
    from optimizer_bench.protocol import DEFAULT_RULE

    def f(x, spec):
        return "-" if x is None else format(x, spec)

    lines = ["| task | rule | seed | Adam lr | target | Adam steps | DH-KFAC steps | step ratio | Adam wall s | "
             "DH-KFAC wall s | wall ratio | goal |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['task']} | {r.get('rule', DEFAULT_RULE)} | {r['seed']} | {r['adam_lr']:g} | {r['target']:.4e} | "
                     f"{f(r['adam_steps'], 'd')} | {f(r['kfac_steps'], 'd')} | {f(r['step_ratio'], '.2f')} | "
                     f"{f(r['adam_wall_s'], '.1f')} | {f(r['kfac_wall_s'], '.1f')} | {f(r['wall_ratio'], '.2f')} | "
                     f"{'met' if r['goal_met'] else 'missed'} |")
    lines += ["", "| task | rule | Adam step | DH-KFAC step | ratio | goal (steps / wall) |",
              "|---|---|---:|---:|---:|---|"]
    for name, t in summary["tasks"].items():
        a = t["per_step_time"]["adam"]["step_median_s"]
        timed = [(DEFAULT_RULE, t["per_step_time"])] + list(t.get("compare_per_step_time", {}).items())
        for rule, per_step in timed:
            k = per_step["dhkfac"]["step_median_s"]
            lines.append(f"| {name} | {rule} | {a * 1e3:.0f} ms | {k * 1e3:.0f} ms | {k / a:.2f} | "
                         f"{t['goal']['step_ratio']:g} / {t['goal']['wall_ratio']:g} |")
    if summary.get("missing"):
        lines += ["", f"Not run (no results): {', '.join(summary['missing'])}."]
    return "\n".join(lines) + "\n"


def plot_suite(summary: dict, path) -> str:
    """Validation loss vs training steps, one panel per task (both optimizers, every seed, targets)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from optimizer_bench.protocol import run_colors, run_label
    from deephedge_tf.files import write_atomic

    names = list(summary["tasks"])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    styles = ["-", "--", ":", "-."]
    colors = run_colors(c for t in summary["tasks"].values() for c in t["curves"])
    for ax, name in zip(axes, names):
        curves = summary["tasks"][name]["curves"]
        seeds = sorted({c["seed"] for c in curves})
        for c in curves:
            xs = [p[0] for p in c["curve"]]
            ys = [p[1] if p[1] is not None and math.isfinite(p[1]) else float("nan") for p in c["curve"]]
            ax.plot(xs, ys, linestyle=styles[seeds.index(c["seed"]) % 4], color=colors[run_label(c)],
                    linewidth=1.2, label=f"{run_label(c)}, seed {c['seed']}")
        for c in curves:
            if c["optimizer"] == "adam":
                ax.axhline(c["target"], color="0.4", linewidth=0.7, linestyle=styles[seeds.index(c["seed"]) % 4])
        if all(p[1] is None or p[1] > 0 for c in curves for p in c["curve"]):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("training steps")
        ax.set_ylabel("validation loss")
        ax.grid(True, alpha=0.3, which="both")
    axes[0].legend(fontsize="x-small")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    path = Path(path)
    write_atomic(path, buf.getvalue())
    return str(path)


def add_suite_parser(sub) -> None:
    """Adds ``suite`` to the ``benchmark`` subcommands."""
    import argparse

    p = sub.add_parser("suite", help="the kfac-vs-adam protocol on every task of the optimizer suite",
                       description="Runs `benchmark kfac-vs-adam` on each task of a suite manifest (default "
                       "configs/suite/suite.yaml: task configs, budgets, goal) with DH-KFAC's defaults; writes "
                       "suite.json, suite.md and learning_curves.png, one table over all tasks and seeds.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--suite", default=str(DEFAULT_MANIFEST), help="suite manifest (YAML)")
    p.add_argument("--tasks", nargs="+", default=None, help="task names (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the manifest's)")
    p.add_argument("--kfac-set", dest="kfac_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of every DH-KFAC run, e.g. training.kfac.max_step=0.5")
    from optimizer_bench.protocol import add_compare_argument

    add_compare_argument(p)
    p.add_argument("--jobs", type=int, default=1,
                   help="tasks run at a time, each in its own process pinned to its share of the CPU cores "
                   "(2 on a 2-core machine: the full suite in about an hour)")
    p.add_argument("--assemble", action="store_true",
                   help="no training: write suite.json, suite.md and learning_curves.png from the per-task "
                   "results already in --out (e.g. of a run stopped before its last task)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run_suite_command(args) -> int:
    from optimizer_bench.protocol import _stderr, compare_rules

    try:
        if args.assemble:
            given = [flag for flag, value in (("--seeds", args.seeds), ("--kfac-set", args.kfac_overrides),
                                              ("--compare", args.compare), ("--jobs", args.jobs != 1)) if value]
            if given:
                raise ConfigError(given[0], "given with --assemble",
                                  "no training options with --assemble (they are read from the results)")
            summary = assemble_suite(args.out, manifest=args.suite, tasks=args.tasks)
        else:
            summary = run_suite(args.out, manifest=args.suite, tasks=args.tasks, seeds=args.seeds,
                                kfac_overrides=args.kfac_overrides, compare=compare_rules(args.compare),
                                log=None if args.quiet else _stderr, jobs=args.jobs)
    except DeepHedgeError as e:
        print(f"deephedge: error: {e}", file=sys.stderr)
        return 2
    print(suite_markdown(summary))
    print(f"goal {'met' if summary['goal_met'] else 'NOT met'} on every task and seed (default rule)")
    return 0
