"""How many quotes of an option chain any smooth smile can put inside their bid/ask spread.

For each maturity, a polynomial of the given degree in standardised log-moneyness ``log(K / F)`` is
fitted to the implied vols by a linear programme that minimises the total distance *outside* the
quotes' bid/ask band (zero for a quote inside): the best such curve by the very criterion of "inside the
spread", with far more freedom (``degree + 1`` coefficients per maturity) than a calibrated model has for
the whole surface.  The share of quotes inside is then an upper bound for any model whose smile at a
maturity is that smooth (Heston has 5 parameters for all maturities).

Usage (repo root, project venv):
    .venv/bin/python benchmarks/chain_inside_bound.py [CHAIN.csv] --degrees 4 8 12
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import linprog

from deephedge_tf.market.option_chain import load_option_chain, spy_chain_path


def best_inside_share(log_moneyness, bid, ask, degree: int) -> float:
    """Share of quotes inside ``[bid, ask]`` for the degree-``degree`` polynomial that minimises the summed
    distance outside the band (a linear programme: ``min sum(u + l)``, ``X c - u <= ask``,
    ``X c + l >= bid``, ``u, l >= 0``)."""
    x = (log_moneyness - log_moneyness.mean()) / log_moneyness.std()
    design = np.vander(x, degree + 1)
    n, p = design.shape
    eye, zeros = np.eye(n), np.zeros((n, n))
    a_ub = np.block([[design, -eye, zeros], [-design, zeros, -eye]])
    b_ub = np.r_[ask, -bid]
    cost = np.r_[np.zeros(p), np.ones(2 * n)]
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * p + [(0, None)] * (2 * n), method="highs")
    if not res.success:
        raise RuntimeError(f"linprog: {res.message}")
    fit = design @ res.x[:p]
    tol = 1e-9
    return float(np.mean((fit >= bid - tol) & (fit <= ask + tol)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chain", nargs="?", default=str(spy_chain_path()))
    ap.add_argument("--degrees", type=int, nargs="+", default=[4, 8, 12])
    args = ap.parse_args(argv)
    quotes = load_option_chain(args.chain).quotes
    print("| expiry | quotes | median spread (vol points) | " + " | ".join(f"degree {d}" for d in args.degrees) + " |")
    print("|---|---:|---:|" + "---:|" * len(args.degrees))
    inside_all = {d: 0.0 for d in args.degrees}
    for expiry, group in quotes.groupby("expiry", sort=False):
        k = np.log(group["strike"].to_numpy() / group["forward"].to_numpy())
        bid, ask = group["bid_iv"].to_numpy(), group["ask_iv"].to_numpy()
        shares = {d: best_inside_share(k, bid, ask, d) for d in args.degrees}
        for d, s in shares.items():
            inside_all[d] += s * len(group)
        spread = 100.0 * float(np.median(ask - bid))
        print(f"| {expiry} | {len(group)} | {spread:.3f} | " + " | ".join(f"{100 * s:.0f}%" for s in shares.values())
              + " |")
    print(f"| all | {len(quotes)} | | " + " | ".join(f"{100 * v / len(quotes):.0f}%" for v in inside_all.values())
          + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
