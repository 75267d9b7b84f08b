"""The shipped quickstart (what `make train` runs) trains a hedge that beats the unhedged position by a
wide margin and is at least as good as the Black-Scholes delta hedge on the training objective."""

from pathlib import Path

import pytest

from deephedge_tf.config import load_config
from deephedge_tf.run import train_job

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_beats_unhedged_and_delta(tmp_path):
    # The shipped training settings, evaluated on fewer paths and without plots to save time.
    cfg = load_config(REPO / "configs/quickstart.yaml", ["evaluation.paths=16384", "evaluation.plots=false"])
    report = train_job(cfg, tmp_path, echo=lambda *_: None, verbose=0)
    s = report["strategies"]
    assert s["hedged"]["objective"] < s["unhedged"]["objective"] / 5
    assert s["hedged"]["objective"] <= s["bs_delta"]["objective"]
    assert report["train"]["skipped_steps"] == 0
