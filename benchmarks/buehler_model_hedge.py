"""The model hedge of Buehler et al.'s Heston example: an independent reference for the experiment's CVaRs.

The ATM call on the paper's Heston (alpha 1, b 0.04, sigma 2, rho -0.7, v0 0.04, s0 100, 30 daily
steps) is hedged daily with the Heston delta in the spot and ``dC/dv / dL/dv`` variance swaps (the
swap's value moves with the variance through ``L(t, v)``, ``dL/dv = (1 - exp(-alpha tau)) / alpha``),
the replicating strategy of the continuous-time model sampled at the trading dates.  Prints the mean,
the 50%- and 99%-CVaR of the loss ``Z - gains`` on paths of the library's Heston market (QE scheme)
and variance swap: what a strategy that knows the model reaches, beside the published deep hedges
(1.94 and 3.49) and ``deephedge experiment buehler_heston``.  The Fourier sensitivities take a few
minutes per 10,000 paths on one core (slower towards maturity).

Usage (repo root, project venv): ``.venv/bin/python benchmarks/buehler_model_hedge.py --paths 10000``
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import tensorflow as tf

from deephedge_tf.evaluation import expected_shortfall, expected_shortfall_se
from deephedge_tf.experiments.buehler_heston import DT, HESTON, S0, STEPS
from deephedge_tf.instruments.hedges import VarianceSwapHedge
from deephedge_tf.market.models import Heston
from deephedge_tf.pricing.heston import heston_price_tf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--chunk", type=int, default=1000)
    args = ap.parse_args(argv)
    h = HESTON
    market = Heston(s0=S0, v0=h["v0"], kappa=h["kappa"], theta=h["theta"], xi=h["xi"], rho=h["rho"], steps=STEPS,
                    dt=DT, seed=args.seed, dtype="float64")
    paths = market.simulate(args.paths)
    swap = VarianceSwapHedge().for_market(market).tensors(paths)
    # Swap values S2_k at the trading dates and at maturity: [T + 1, B].
    swap_value = np.concatenate([swap.premiums[:, :, 0].numpy(),
                                 (swap.premiums[-1:, :, 0] + swap.returns[-1:, :, 0]).numpy()], axis=0)
    spot, variance = paths.spot.numpy(), paths.variance.numpy()

    @tf.function
    def sensitivities(s, v, tau):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([s, v])
            price = heston_price_tf(s, S0, tau, v, h["kappa"], h["theta"], h["xi"], h["rho"])
        return tape.gradient(price, s), tape.gradient(price, v)

    gains = np.zeros(args.paths)
    for k in range(STEPS):
        tau = (STEPS - k) * DT
        parts = [sensitivities(tf.constant(spot[k, j:j + args.chunk]),
                               tf.constant(np.maximum(variance[k, j:j + args.chunk], 1e-8)),
                               tf.constant(tau, tf.float64))
                 for j in range(0, args.paths, args.chunk)]
        delta = np.concatenate([p[0].numpy() for p in parts])
        vega = np.concatenate([p[1].numpy() for p in parts])
        swaps = vega / ((1.0 - math.exp(-h["kappa"] * tau)) / h["kappa"])
        gains += delta * (spot[k + 1] - spot[k]) + swaps * (swap_value[k + 1] - swap_value[k])
    loss = np.maximum(spot[-1] - S0, 0.0) - gains
    print(f"model hedge, {args.paths} paths: mean {loss.mean():.4f} +- {loss.std(ddof=1) / math.sqrt(loss.size):.4f}, "
          f"50%-CVaR {expected_shortfall(-loss, 0.5):.4f} +- {expected_shortfall_se(-loss, 0.5):.4f}, "
          f"99%-CVaR {expected_shortfall(-loss, 0.99):.4f} +- {expected_shortfall_se(-loss, 0.99):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
