"""The shipped quickstart (what `make train` runs: 80 DH-KFAC steps with the optimizer's defaults) trains a
hedge that beats the unhedged position and the Black-Scholes delta hedge by wide margins on the training
objective."""

from pathlib import Path

import pytest

from deephedge_tf.config import load_config
from deephedge_tf.run import train_job

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_beats_unhedged_and_delta(tmp_path):
    # The shipped settings but half the steps (40 of 80; the defaults reach a tuned Adam's 800-step best in
    # 40-50 steps on this task, BENCHMARKS.md "Optimizer suite"), evaluated on fewer paths, no plots: the
    # suite's time budget.
    cfg = load_config(REPO / "configs/quickstart.yaml", ["training.epochs=4", "evaluation.paths=16384",
                                                          "evaluation.plots=false"])
    report = train_job(cfg, tmp_path, echo=lambda *_: None, verbose=0)
    s = report["strategies"]
    # Objective gamma Var[PnL] + E[costs]: unhedged ~1.6, delta ~0.11, a tuned Adam's best after 800
    # steps ~0.031 (BENCHMARKS.md, optimizer suite); its standard error on 16,384 paths is ~2%.
    assert s["hedged"]["objective"] < s["unhedged"]["objective"] / 20
    assert s["hedged"]["objective"] < s["bs_delta"]["objective"] / 2
    assert report["train"]["skipped_steps"] == 0
