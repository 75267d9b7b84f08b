"""Pieces of ``deephedge experiment kfac_lstm`` (deephedge_tf.experiments.kfac_lstm).

The experiment (two LSTM-policy trainings over 250 daily steps) takes minutes at its small scale, more
than the test suite's budget has room for; docs/experiments.md has its run.  What is checked: the
configs are the paper's stated setting (its t-tests are deephedge_tf.evaluation.paired_t_test, tested
in tests/test_evaluation.py).
"""

from __future__ import annotations

import pytest

from deephedge_tf.config import KFACConfig
from deephedge_tf.experiments.kfac_lstm import HESTON, SIZES, lstm_config


@pytest.mark.parametrize("scale", ["small", "full"])
def test_configs_are_the_papers_stated_setting(scale):
    kfac, adam = lstm_config("dhkfac", 0, scale), lstm_config("adam", 0, scale)
    assert (kfac.time.steps, kfac.time.dt, kfac.market.s0) == (250, 1 / 250, 100.0)
    h = kfac.market.heston
    assert (h.v0, h.theta, h.kappa, h.xi, h.rho) == (0.04, 0.04, 2.0, 0.5, -0.7) == tuple(
        HESTON[k] for k in ("v0", "theta", "kappa", "xi", "rho"))
    assert kfac.policy.kind == "recurrent" and kfac.objective.kind == "mean_variance" and kfac.objective.gamma == 1.0
    assert kfac.training.kfac == KFACConfig() and adam.training.learning_rate == 1e-3
    steps = {c.training.optimizer: c.training.epochs * c.training.batches_per_epoch for c in (kfac, adam)}
    assert steps == {"dhkfac": SIZES[scale]["steps"], "adam": SIZES[scale]["steps"]}  # the same steps, as the paper
