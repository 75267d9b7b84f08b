"""No-transaction band network vs the feed-forward (MLP) hedger: Imaki et al. (2021), European call.

Published (pfnet-research/NoTransactionBandNetwork notebook, one run; see
shared/design/REFERENCE-VALUES.md): GBM sigma 0.2, S0 = K = 1, T = 30/365, dt = 1/365, cost 1e-3 on
the spot, entropic risk a = 1, 200 Adam steps of 50,000 fresh paths: premium (entropic indifference
price of the hedged short call) 0.022544 for the band network, 0.022771 for the feed-forward network.

What this script does, per grid and seed:
  * trains ``configs/ntb_bs_call.yaml`` (``ntb``: ``no_transaction_band`` with
    ``band_anchor: bs_delta``, the band ``[delta - leaky_relu(o1), delta + leaky_relu(o2)]`` of the
    authors' reference code, which is the network behind the published number),
  * trains the same config with ``policy.band_anchor=none`` (``ntb_none``: the network outputs the
    band edges, as in the paper's text; the library's default anchor),
  * trains ``configs/mlp_bs_call.yaml`` (``mlp``: MLP on [features, holdings] -> target position;
    the reference code's feed-forward network adds its output, squashed by tanh, to the BS delta),
  * evaluates every trained policy and the baselines (no hedge, Black-Scholes delta, Whalley-Wilmott
    band with lambda = a) on the SAME out-of-sample paths (fixed seed ``EVAL_SEED``, chunked), so
    differences between strategies are paired.

Price = entropic risk of the hedged short call, rho(X) = (1/a) log E[exp(-a X)], X = pnl (computed in
float64 from the float32 PnL).  Standard errors:
  * ``s.e.``: delta method.  With W_i = exp(-a X_i) / mean(exp(-a X)), rho_hat = (1/a) log mean(...)
    has Var ~= Var(W) / (a^2 n);
  * ``vs unhedged``: rho(strategy) - rho(no hedge) on the same paths, s.e. by the delta method on the
    pair, Var ~= Var(W_strategy - W_unhedged) / (a^2 n): much smaller than either price's s.e.
    because both share the payoff noise;
  * ``s.e. (batch means)``: the spread of the price over the evaluation chunks / sqrt(chunks), a
    check on the delta method (it also carries the estimator's O(1/chunk) bias, negligible here).

Grids (``--grid``):
  * ``nominal``: the setting as stated, 30 daily steps, zero drift (the configs as written);
  * ``published``: the grid the reference code actually simulates.  Its path generator draws
    ``int(maturity / dt)`` points, and ``(30/365) / (1/365)`` is 29.999999999999996 in floating point,
    so 29 points: 28 daily steps (the call matures after 28 days), and its drift correction uses a
    time axis ``linspace(0, 30/365, 29)``, i.e. ``log S_n = sigma W_n - sigma^2/2 * n * 30/(28*365)``:
    a drift mu = -sigma^2/28 per year.  (Its BS-delta feature also uses time to expiry
    ``(30 - n)/365``, two days too long; not reproduced: our features use the true time to expiry.)
    On this grid the Black-Scholes price is 0.02210 and the no-hedge price about 0.0226, against
    0.02287 and about 0.0235 on the nominal grid, so only this grid is directly comparable with the
    published numbers.

Usage (repo root, project venv)::

    .venv/bin/python benchmarks/ntb_experiment.py                      # both grids, seeds 0 1
    .venv/bin/python benchmarks/ntb_experiment.py --seeds 0 1 2 --grid published --write BENCHMARKS.md
    .venv/bin/python benchmarks/ntb_experiment.py --quick              # a smoke run (~2 min)
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deephedge_tf.config import load_config  # noqa: E402
from deephedge_tf.evaluation import entropic_risk, entropic_risk_se, paired_entropic_difference  # noqa: E402
from deephedge_tf.features import make_batch  # noqa: E402
from deephedge_tf.training import build_parts, fit_hedger, make_hedger  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"ntb": REPO / "configs/ntb_bs_call.yaml", "ntb_none": REPO / "configs/ntb_bs_call.yaml",
           "mlp": REPO / "configs/mlp_bs_call.yaml"}
KIND_OVERRIDES = {"ntb_none": ["policy.band_anchor=none"]}
PUBLISHED = {"ntb": 0.022544, "ntb_none": 0.022544, "mlp": 0.022771}
HEADING = "## No-transaction band network vs MLP (Imaki et al.)"
EVAL_SEED = 10_007  # evaluation paths: one stream for every seed, policy and baseline
CHUNK = 8192
BASELINES = ("no_hedge", "bs_delta", "whalley_wilmott")
LABELS = {"ntb": "NTB (band_anchor bs_delta: config, reference code)", "ntb_none": "NTB (band_anchor none)",
          "mlp": "MLP (config)", "no_hedge": "no hedge", "bs_delta": "BS delta",
          "whalley_wilmott": "Whalley-Wilmott band"}


def grid_overrides(grid: str, sigma: float) -> list[str]:
    """Config overrides of a grid (see the module docstring)."""
    if grid == "nominal":
        return []
    if grid == "published":
        return ["time.steps=28", f"market.gbm.mu={-sigma * sigma / 28.0!r}"]
    raise ValueError(grid)


# -- statistics -------------------------------------------------------------------------------------

def entropic(pnl, a: float = 1.0) -> float:
    """(1/a) log mean(exp(-a pnl)) in float64, stable for any pnl."""
    return entropic_risk(pnl, a)


def entropic_se(pnl, a: float = 1.0) -> float:
    """Delta-method standard error of the entropic risk estimate."""
    return entropic_risk_se(pnl, a)


def paired_difference(pnl, ref, a: float = 1.0) -> tuple[float, float]:
    """rho(pnl) - rho(ref) on the same paths and its delta-method standard error."""
    return paired_entropic_difference(pnl, ref, a)


def batch_means_se(pnl, chunk: int, a: float = 1.0) -> float:
    """Standard error from the spread of per-chunk prices (needs >= 2 whole chunks)."""
    k = np.asarray(pnl).size // chunk
    if k < 2:
        return float("nan")
    prices = [entropic(pnl[i * chunk:(i + 1) * chunk], a) for i in range(k)]
    return float(np.std(prices, ddof=1) / math.sqrt(k))


# -- training and evaluation ---------------------------------------------------------------------------

def load(kind: str, grid: str, seed: int, extra: list[str]):
    """The resolved config of ``kind`` on ``grid`` with ``seed`` and the user's overrides."""
    over = [f"seed={seed}"] + KIND_OVERRIDES.get(kind, [])
    sigma = load_config(CONFIGS[kind], over + extra).market.gbm.sigma
    return load_config(CONFIGS[kind], over + grid_overrides(grid, sigma) + extra)


def evaluate(models: dict, parts, num_paths: int, chunk: int = CHUNK) -> dict:
    """PnL and costs of each model on the same ``num_paths`` evaluation paths (seed EVAL_SEED)."""
    fns = {name: tf.function(lambda b, m=m: m(b, training=False), reduce_retracing=True)
           for name, m in models.items()}
    out = {name: {"pnl": [], "costs": []} for name in models}
    for start in range(0, num_paths, chunk):
        size = min(chunk, num_paths - start)
        batch = make_batch(parts.market.simulate(size, start=start, seed=EVAL_SEED), parts.derivative,
                           parts.instruments)
        for name, fn in fns.items():
            o = fn(batch)
            out[name]["pnl"].append(o["pnl"].numpy())
            out[name]["costs"].append(o["costs"].numpy())
    return {name: {k: np.concatenate(v) for k, v in o.items()} for name, o in out.items()}


def run(grids, seeds, kinds, eval_paths: int, extra: list[str], echo=lambda s: print(s, flush=True)) -> list[dict]:
    rows = []
    for grid in grids:
        base_cfg = load("ntb", grid, seeds[0], extra)
        parts = build_parts(base_cfg)
        a = base_cfg.objective.a
        baselines = {k: make_hedger(base_cfg, parts, policy_kind=k, compile=False) for k in BASELINES}
        res = evaluate(baselines, parts, eval_paths)
        ref = res["no_hedge"]["pnl"]
        for name, r in res.items():
            rows.append(dict(grid=grid, policy=name, seed=None, wall_s=None, steps=None, a=a, **r))
        echo(f"[{grid}] baselines: " + ", ".join(f"{k} {entropic(v['pnl'], a):.6f}" for k, v in res.items()))
        for seed in seeds:
            for kind in kinds:
                cfg = load(kind, grid, seed, extra)
                parts = build_parts(cfg)
                hedger = make_hedger(cfg, parts)
                t0 = time.perf_counter()
                fit_hedger(cfg, hedger, parts, verbose=0)
                wall = time.perf_counter() - t0
                r = evaluate({kind: hedger}, parts, eval_paths)[kind]
                steps = int(hedger.optimizer.iterations.numpy())
                rows.append(dict(grid=grid, policy=kind, seed=seed, wall_s=wall, steps=steps, a=a, **r))
                diff, dse = paired_difference(r["pnl"], ref, a)
                echo(f"[{grid}] {kind:<10} seed {seed}: price {entropic(r['pnl'], a):.6f} "
                     f"(vs no hedge {diff:+.2e} +- {dse:.1e}), {steps} steps in {wall:.0f} s")
    for r in rows:
        ref = next(x for x in rows if x["grid"] == r["grid"] and x["policy"] == "no_hedge")["pnl"]
        r["price"] = entropic(r["pnl"], r["a"])
        r["se"] = entropic_se(r["pnl"], r["a"])
        r["se_batch"] = batch_means_se(r["pnl"], CHUNK, r["a"])
        r["diff"], r["diff_se"] = paired_difference(r["pnl"], ref, r["a"])
        r["cost"] = float(np.mean(r["costs"]))
    return rows


def table(rows) -> str:
    lines = ["| grid | policy | seed | price | s.e. | s.e. (batch means) | minus no hedge (paired) | mean cost "
             "| published | train wall s (steps) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pub = PUBLISHED.get(r["policy"])
        pub = "-" if pub is None else f"{pub:.6f}"
        seed = "-" if r["seed"] is None else r["seed"]
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f} ({r['steps']})"
        lines.append(
            f"| {r['grid']} | {LABELS[r['policy']]} | {seed} | {r['price']:.6f} | {r['se']:.1e} "
            f"| {r['se_batch']:.1e} | {r['diff']:+.2e} +- {r['diff_se']:.1e} | {r['cost']:.2e} | {pub} | {wall} |")
    return "\n".join(lines)


def section(rows, cfg, command: str, eval_paths: int, total_s: float) -> str:
    t = cfg.training
    head = (f"### Run of {datetime.date.today().isoformat()}\n\n"
            f"Command: `{command}`  \n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), TensorFlow {tf.__version__}, "
            f"Keras {keras.__version__}, Python {platform.python_version()}; total {total_s / 60:.1f} min.  \n"
            f"Training: {t.epochs} epochs x {t.batches_per_epoch} Adam steps of {t.batch_size} fresh paths, "
            f"lr {t.learning_rate:g}, {cfg.policy.num_layers} x {cfg.policy.width} ReLU layers, float32.  \n"
            f"Evaluation: the same {eval_paths:,} out-of-sample paths (seed {EVAL_SEED}) for every row of a grid; "
            f"prices are entropic risks (a = {cfg.objective.a:g}) of the hedged short call.\n\n")
    return head + table(rows) + "\n"


def write_section(path: Path, text: str) -> None:
    """Appends ``text`` at the end of this benchmark's section (created at the end of the file if absent),
    leaving every other section as it is."""
    doc = path.read_text() if path.exists() else ""
    lines = doc.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == HEADING)
    except StopIteration:
        sep = "" if doc.endswith("\n\n") or not doc else ("\n" if doc.endswith("\n") else "\n\n")
        path.write_text(doc + sep + HEADING + "\n\n" + text)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    before, after = "".join(lines[:end]), "".join(lines[end:])
    if not before.endswith("\n\n"):
        before += "\n" if before.endswith("\n") else "\n\n"
    path.write_text(before + text + ("\n" + after if after else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--grid", choices=("nominal", "published", "both"), default="both")
    ap.add_argument("--policies", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--eval-paths", type=int, default=524_288)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every trained policy, e.g. training.epochs=40")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 epochs, 32k evaluation paths, seed 0")
    ap.add_argument("--write", type=Path, help="append the results to this markdown file (e.g. BENCHMARKS.md)")
    args = ap.parse_args(argv)
    tf.get_logger().setLevel("ERROR")  # one tf.function per evaluated model: retracing notes are expected
    if args.quick:
        args.seeds, args.eval_paths = args.seeds[:1], 32_768
        args.set = ["training.epochs=3"] + args.set
    grids = ("nominal", "published") if args.grid == "both" else (args.grid,)
    t0 = time.perf_counter()
    rows = run(grids, args.seeds, args.policies, args.eval_paths, args.set)
    total = time.perf_counter() - t0
    command = "python benchmarks/ntb_experiment.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cfg = load("ntb", grids[0], args.seeds[0], args.set)
    text = section(rows, cfg, command.strip(), args.eval_paths, total)
    print()
    print(text)
    if args.write:
        write_section(args.write, text)
        print(f"appended to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
