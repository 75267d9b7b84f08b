"""deephedge_tf side by side with pfhedge, measured in one run on this machine.

Two measurements, each library in a fresh process of its own (pfhedge needs ``numpy < 2``, TensorFlow
2.21 here runs ``numpy 2``, so pfhedge lives in its own virtual environment, ``make pfhedge-venv``):

* **No-transaction band network, European call** (Imaki et al.'s setting as pfhedge's README writes it:
  GBM sigma 0.2, S0 = 1, 30 daily steps, cost 1e-3, entropic risk a = 1, the band ``delta -+
  leaky_relu(MLP)`` with a 4 x 32 ReLU MLP, Adam 1e-3, fresh paths every step): training throughput in
  path-steps per second over the whole ``fit`` (model set-up, tracing and compiling included; imports
  not), once with no validation and once with a validation loss on as many paths after every step
  (pfhedge's ``fit`` default).  Then the price (entropic indifference price of the hedged short call)
  each trained network reaches on fresh evaluation paths, with its standard error.
* **Heston path generation** (Andersen's QE, float32): path-steps per second, the best of three runs
  after one warm-up run (so ours is timed after XLA compiled its loop; the warm-up time is reported too).

Usage (from the repo root):
    make pfhedge-venv                      # once: .venv-pfhedge with torch 2.13.0 (CPU) and pfhedge 0.23.0
    .venv/bin/python benchmarks/vs_pfhedge.py [--quick] [--write BENCHMARKS.md]

``--quick`` shrinks every size 10x (a smoke run, not a result).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PFHEDGE_PYTHON = ROOT / ".venv-pfhedge" / "bin" / "python"

SPEC = {"seed": 0, "sigma": 0.2, "cost": 1e-3, "dt": 1 / 365, "maturity": 30 / 365, "layers": 4, "width": 32,
        "a": 1.0, "paths": 50_000, "train_steps": 50, "validation": False, "eval_seed": 1, "eval_paths": 200_000,
        "heston": {"paths": 100_000, "steps": 250, "kappa": 1.0, "theta": 0.04, "xi": 2.0, "rho": -0.7,
                   "dt": 1 / 250, "v0": 0.04, "repeats": 3}}


def ntb_config(spec: dict):
    """Our config of the pfhedge task in ``spec``."""
    from deephedge_tf.config import from_dict

    steps = round(spec["maturity"] / spec["dt"])
    val = spec["validation"]
    return from_dict({
        "seed": spec["seed"], "dtype": "float32",
        "time": {"steps": steps, "dt": spec["dt"]},
        "market": {"model": "gbm", "s0": 1.0, "gbm": {"mu": 0.0, "sigma": spec["sigma"]}},
        "derivative": {"kind": "european", "is_call": True, "strike": 1.0},
        "hedges": {"spot": {"enabled": True, "cost": spec["cost"]}},
        "policy": {"kind": "no_transaction_band", "num_layers": spec["layers"], "width": spec["width"],
                   "band_anchor": "bs_delta"},
        "objective": {"kind": "entropic", "a": spec["a"]},
        # One epoch of all steps (validation on 1 path at its end: nothing) or one step per epoch with a
        # validation on as many paths as a batch after each, as pfhedge's fit(validation=True) does.
        "training": {"optimizer": "adam", "learning_rate": 1.0e-3, "batch_size": spec["paths"],
                     "time_loop": "graph", "batches_per_epoch": 1 if val else spec["train_steps"],
                     "epochs": spec["train_steps"] if val else 1, "fresh_paths": True,
                     "validation_paths": spec["paths"] if val else 1},
        "evaluation": {"paths": spec["eval_paths"], "plots": False},
    })


def ours_ntb(spec: dict) -> dict:
    from deephedge_tf.evaluation import entropic_risk, entropic_risk_se
    from deephedge_tf.evaluation.compare import strategy_outputs
    from deephedge_tf.experiments import train
    from deephedge_tf.training import build_parts

    cfg = ntb_config(spec)
    start = time.perf_counter()
    parts = build_parts(cfg)
    hedger, _, _ = train(cfg, parts)
    wall = time.perf_counter() - start
    pnl = strategy_outputs({"ntb": hedger}, parts.market, parts.derivative, parts.instruments,
                           spec["eval_paths"], spec["eval_seed"])["ntb"]["pnl"]
    return {"wall_s": wall, "price": entropic_risk(pnl, spec["a"]), "price_se": entropic_risk_se(pnl, spec["a"]),
            "time_steps": cfg.time.steps}


def ours_heston(spec: dict) -> dict:
    import tensorflow as tf

    from deephedge_tf.market.heston import simulate_heston

    p = spec["heston"]
    run = lambda: simulate_heston(p["paths"], p["steps"], p["dt"], v0=p["v0"], kappa=p["kappa"],  # noqa: E731
                                  theta=p["theta"], xi=p["xi"], rho=p["rho"], dtype=tf.float32).spot.numpy()
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(p["repeats"]):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"wall_s": min(times), "first_s": first}


def side(library: str, part: str, spec: dict) -> dict:
    """Runs one measurement in a fresh process: ``library`` is ``"ours"`` or ``"pfhedge"``."""
    if library == "pfhedge":
        if not PFHEDGE_PYTHON.exists():
            sys.exit(f"vs_pfhedge: {PFHEDGE_PYTHON} not found; create it with `make pfhedge-venv`")
        cmd = [str(PFHEDGE_PYTHON), str(Path(__file__).parent / "pfhedge" / "pfhedge_side.py")]
    else:
        cmd = [sys.executable, __file__, "--ours"]
    cmd += ["--part", part, "--spec", json.dumps(spec)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"vs_pfhedge: {library} {part} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every size 10x smaller (smoke run)")
    parser.add_argument("--write", metavar="FILE", help="append the results section to FILE")
    parser.add_argument("--json", metavar="FILE", default=None, help="write the raw results as JSON")
    parser.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=("ntb", "heston"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours:  # a child process: one measurement of ours
        spec = json.loads(args.spec)
        print(json.dumps(ours_ntb(spec) if args.part == "ntb" else ours_heston(spec)))
        return

    spec = json.loads(json.dumps(SPEC))
    if args.quick:
        spec.update(paths=5000, train_steps=10, eval_paths=20_000)
        spec["heston"]["paths"] = 10_000
    if spec["eval_paths"] % spec["paths"]:  # pfhedge evaluates in batches of `paths`
        sys.exit("vs_pfhedge: eval_paths must be a multiple of paths")
    rows, raw = [], {}
    for validation in (False, True):
        s = {**spec, "validation": validation}
        res = {lib: side(lib, "ntb", s) for lib in ("pfhedge", "ours")}
        raw[f"ntb_validation_{validation}"] = res
        if res["ours"]["time_steps"] != res["pfhedge"]["time_steps"]:
            sys.exit(f"vs_pfhedge: time steps differ: ours {res['ours']['time_steps']}, pfhedge "
                     f"{res['pfhedge']['time_steps']}")
        work = s["paths"] * s["train_steps"] * res["ours"]["time_steps"] * (2 if validation else 1)
        rate = {lib: work / r["wall_s"] / 1e6 for lib, r in res.items()}
        what = (f"NTB training, {s['train_steps']} steps x {s['paths']:,} paths"
                + (", validation on as many paths after every step" if validation else ""))
        ratio = rate["ours"] / rate["pfhedge"]
        rows.append([what, f"{rate['ours']:.2f}", f"{rate['pfhedge']:.2f}", f"**{ratio:.2f}x**",
                     f"{res['ours']['wall_s']:.1f} s vs {res['pfhedge']['wall_s']:.1f} s; price "
                     f"{res['ours']['price']:.5f} +- {res['ours']['price_se']:.5f} vs "
                     f"{res['pfhedge']['price']:.5f} +- {res['pfhedge']['price_se']:.5f}"])
        print(rows[-1])
    h = spec["heston"]
    res = {lib: side(lib, "heston", spec) for lib in ("pfhedge", "ours")}
    raw["heston"] = res
    rate = {lib: h["paths"] * h["steps"] / r["wall_s"] / 1e6 for lib, r in res.items()}
    rows.append([f"Heston QE paths, {h['paths']:,} x {h['steps']} steps, float32", f"{rate['ours']:.1f}",
                 f"{rate['pfhedge']:.1f}", f"**{rate['ours'] / rate['pfhedge']:.2f}x**",
                 f"{res['ours']['wall_s']:.2f} s vs {res['pfhedge']['wall_s']:.2f} s (ours' first call, "
                 f"compiling: {res['ours']['first_s']:.2f} s)"])
    print(rows[-1])
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": spec, "results": raw}, indent=2) + "\n")
    import report

    versions = raw["heston"]["pfhedge"]
    details = (f"pfhedge {versions['pfhedge']} on torch {versions['torch']} ({versions['threads']} threads); "
               f"evaluation on {spec['eval_paths']:,} fresh paths per library; rates in million path-steps/s "
               "(a validation pass counts as the work of a training step, so the rates with validation are "
               "higher than without; compare ratios)")
    text = report.section("deephedge_tf vs pfhedge" + (" (quick)" if args.quick else ""),
                          ".venv/bin/python benchmarks/vs_pfhedge.py" + (" --quick" if args.quick else ""),
                          details, ["task", "ours (M path-steps/s)", "pfhedge", "ratio", "wall, price"],
                          ["---", "---:", "---:", "---:", "---"], rows)
    report.publish(text, args.write)


if __name__ == "__main__":
    main()
