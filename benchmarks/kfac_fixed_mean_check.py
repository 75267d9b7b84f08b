"""DH-KFAC-only rerun of `deephedge benchmark kfac-vs-adam` seeds against the targets of an earlier run,
with the variance curvature's fixed-mean form (the DH-KFAC paper's surrogate) patched in.  Used once
(2026-11-26) to tell whether the centred GGN caused seeds 1 and 2 of the cliquet_small run to reach the
target later; the fixed-mean form is now the library's default, so the patch below is what
`VarianceCurvature(gamma)` does today.

Usage (repo root): .venv/bin/python benchmarks/kfac_fixed_mean_check.py 1 2   (reads
runs/kfac_vs_adam_generic/results.json for the targets)
"""
import dataclasses, json, sys
import tensorflow as tf
from optimizer_bench import protocol as bm
from deephedge_tf.config import load_config
from deephedge_tf.objectives import VarianceCurvature
from deephedge_tf.dtypes import to_float
from deephedge_tf.builders import build_optimizer
from deephedge_tf.training import build_parts, datasets

def bilinear(self, outputs, u, v, targets=None, sample_weight=None):   # the old, uncentred GGN
    u = tf.convert_to_tensor(u); v = tf.cast(v, u.dtype)
    return to_float(2.0 * self.gamma, u.dtype) * tf.reduce_mean(u * v)
def pseudo(self, outputs, targets=None, seed=None, sample_weight=None):
    pnl = tf.convert_to_tensor(outputs)
    return tf.ones_like(pnl) * tf.sqrt(to_float(2.0 * self.gamma, pnl.dtype))
VarianceCurvature.bilinear, VarianceCurvature.pseudo_gradient = bilinear, pseudo

res = json.load(open("runs/kfac_vs_adam_generic/results.json"))
targets = {s["seed"]: s["target"] for s in res["summary"]["per_seed"]}
config = "configs/cliquet_small.yaml"
base = load_config(config)
base = dataclasses.replace(base, training=dataclasses.replace(base.training, optimizer="adam"))
kfac_base = load_config(config, bm._kfac_overrides(1.0, []))
parts = build_parts(base)
seeds = [int(a) for a in sys.argv[1:]]
warmup = datasets(dataclasses.replace(base, seed=0), parts)[0][0]
kfac = bm._Runner(kfac_base, parts, build_optimizer(kfac_base), None, warmup, print)
for s in seeds:
    cfg_a, cfg_k = dataclasses.replace(base, seed=s), dataclasses.replace(kfac_base, seed=s)
    valid = list(datasets(cfg_a, parts)[1]); init = bm._initial_weights(cfg_a, parts, warmup)
    run = bm._train(kfac, cfg_k, parts, init, None, 300, 10, valid, target=targets[s], log=lambda m: None, label=f"s{s}")
    hit = bm.first_at_or_below(run["curve"], targets[s])
    print("UNCENTRED seed", s, "target", targets[s], "reached at", hit and hit.get("step"), flush=True)
