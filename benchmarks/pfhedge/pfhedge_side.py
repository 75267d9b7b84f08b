"""pfhedge's half of benchmarks/vs_pfhedge.py: run in the pfhedge venv (torch + pfhedge, no TensorFlow).

Prints one JSON object: the no-transaction band network's training wall time and price, and Heston path
generation times.  The task is fixed by ``--spec`` (JSON written by vs_pfhedge.py) so that both libraries
run the same sizes; nothing here imports deephedge_tf.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as fn
from pfhedge.instruments import BrownianStock, EuropeanOption
from pfhedge.nn import BlackScholes, Clamp, EntropicRiskMeasure, Hedger, MultiLayerPerceptron
from pfhedge.stochastic import generate_heston


class NoTransactionBandNet(torch.nn.Module):
    """The band network of pfhedge's README / Imaki et al.: Black-Scholes delta +- leaky_relu(MLP)."""

    def __init__(self, derivative, layers: int, width: int):
        super().__init__()
        self.delta = BlackScholes(derivative)
        self.mlp = MultiLayerPerceptron(out_features=2, n_layers=layers, n_units=width)
        self.clamp = Clamp()

    def inputs(self):
        return self.delta.inputs() + ["prev_hedge"]

    def forward(self, x):
        prev_hedge = x[..., [-1]]
        delta = self.delta(x[..., :-1])
        width = self.mlp(x[..., :-1])
        return self.clamp(prev_hedge, min=delta - fn.leaky_relu(width[..., [0]]),
                          max=delta + fn.leaky_relu(width[..., [1]]))


def ntb(spec: dict) -> dict:
    torch.manual_seed(spec["seed"])
    start = time.perf_counter()
    stock = BrownianStock(sigma=spec["sigma"], cost=spec["cost"], dt=spec["dt"])
    derivative = EuropeanOption(stock, maturity=spec["maturity"], strike=1.0)
    model = NoTransactionBandNet(derivative, spec["layers"], spec["width"])
    hedger = Hedger(model, inputs=model.inputs(), criterion=EntropicRiskMeasure(a=spec["a"]))
    hedger.fit(derivative, n_paths=spec["paths"], n_epochs=spec["train_steps"], verbose=False,
               validation=spec["validation"])
    wall = time.perf_counter() - start
    hedger.eval()
    torch.manual_seed(spec["eval_seed"])
    a = spec["a"]
    chunks = []
    with torch.no_grad():
        for _ in range(spec["eval_paths"] // spec["paths"]):
            chunks.append(hedger.compute_pnl(derivative, n_paths=spec["paths"]))
    pnl = torch.cat(chunks).double()
    w = torch.exp(-a * pnl)
    price = float(torch.log(w.mean()) / a)
    se = float(w.std() / w.mean() / a / math.sqrt(pnl.numel()))  # delta method
    steps = derivative.underlier.spot.shape[-1] - 1
    return {"wall_s": wall, "price": price, "price_se": se, "time_steps": steps}


def heston(spec: dict) -> dict:
    p = spec["heston"]
    run = lambda: generate_heston(p["paths"], p["steps"] + 1, kappa=p["kappa"], theta=p["theta"],  # noqa: E731
                                  sigma=p["xi"], rho=p["rho"], dt=p["dt"], init_state=(1.0, p["v0"]))
    run()
    times = []
    for _ in range(p["repeats"]):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"wall_s": min(times)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--part", choices=("ntb", "heston"), required=True)
    args = parser.parse_args()
    spec = json.loads(args.spec)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    import pfhedge
    out["pfhedge"] = pfhedge.__version__
    out.update(ntb(spec) if args.part == "ntb" else heston(spec))
    print(json.dumps(out))
