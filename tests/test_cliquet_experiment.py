"""Pieces of ``deephedge experiment cliquet`` (deephedge_tf.experiments.cliquet).

The experiment itself (three recurrent-policy trainings on the 60-step cliquet) takes ~5 minutes at its
small scale on two cores, more than the test suite's budget has room for; docs/experiments.md has its
run.  What is checked: the configs are the paper's setting, the bootstrap standard error of the option
hedge's std reduction is the spread of that estimate over independent replications, and the reset-date
statistics count what they say.
"""

from __future__ import annotations

import numpy as np
import pytest

from deephedge_tf.config import KFACConfig
from deephedge_tf.experiments import paired_bootstrap
from deephedge_tf.experiments.cliquet import (GAMMA, GRIDS, RESET_EVERY, SIZES, _activity, _figures, _std_reduction,
                                              cliquet_config, std_se)


@pytest.mark.parametrize("scale", ["small", "full"])
def test_configs_are_the_papers_task(scale):
    kfac, adam = cliquet_config(scale, "dhkfac", 0), cliquet_config(scale, "adam", 0)
    spot = cliquet_config(scale, "dhkfac", 0, options=False)
    assert kfac.time.steps == SIZES[scale]["steps"] and kfac.time.steps % RESET_EVERY == 0
    assert kfac.objective.kind == "mean_variance" and kfac.objective.gamma == GAMMA == 1000.0
    assert list(kfac.hedges.floating_grid.maturities) == GRIDS[scale][1] and kfac.hedges.floating_grid.cost == 1e-2
    assert spot.hedges.floating_grid.maturities == () and spot.hedges.spot.cost == 1e-4
    assert kfac.training.optimizer == "dhkfac" and kfac.training.kfac == KFACConfig()  # the defaults
    assert adam.training.learning_rate == 1e-3 and adam.training.clipnorm == 1.0
    steps = {c.training.optimizer: c.training.epochs * c.training.batches_per_epoch for c in (kfac, adam)}
    assert steps == {"dhkfac": SIZES[scale]["kfac_steps"], "adam": SIZES[scale]["adam_steps"]}
    assert kfac.policy.kind == "recurrent" and (kfac.policy.num_blocks, kfac.policy.width) == (4, 32)


def test_bootstrap_se_of_the_std_reduction_matches_the_spread_over_replications():
    """Paired PnLs y (spot only) and x = 0.9 y + noise: over 150 replications of 2,000 paths the
    estimates of 1 - std(x) / std(y) centre on the truth and spread by the bootstrap s.e. (within 20%)."""
    rng = np.random.default_rng(5)
    noise = 0.3
    truth = 1.0 - np.sqrt(0.81 + noise ** 2)
    values, ses = [], []
    for _ in range(150):
        y = rng.standard_normal(2000)
        x = 0.9 * y + noise * rng.standard_normal(2000)
        value, se = paired_bootstrap(_std_reduction, x, y)
        values.append(value)
        ses.append(se)
    assert np.mean(values) == pytest.approx(truth, abs=4 * np.std(values) / np.sqrt(150))
    assert np.std(values, ddof=1) == pytest.approx(np.mean(ses), rel=0.2)


def test_std_se_matches_the_spread_of_the_standard_deviation_over_replications():
    """Skewed samples (exponential, like a PnL's tail): over 300 replications of 2,000 paths the sample
    standard deviation spreads by the delta-method s.e. (within 15%)."""
    rng = np.random.default_rng(3)
    stds, ses = [], []
    for _ in range(300):
        x = rng.exponential(size=2000)
        stds.append(x.std(ddof=1))
        ses.append(std_se(x))
    assert np.std(stds, ddof=1) == pytest.approx(np.mean(ses), rel=0.15)


def test_reset_statistics_count_trades_on_reset_dates():
    steps, maturities = 60, [10, 20]
    mean_abs = np.ones((steps, 3))
    mean_abs[::RESET_EVERY, 0] = 4.0             # the spot trades 4x as much on reset dates
    mean_abs[20, 2] = 3.0                        # 20-step options: 3x at the first reset after step 0,
    mean_abs[39, 1:] = 2.0                       # options: 2x + 2x the step before the second
    activity = _activity(mean_abs, 0, maturities)
    assert list(activity.reset[activity.reset].index) == [0, 20, 40]
    assert activity.options_20.sum() == steps + 3.0 and activity.options_10.sum() == steps + 1.0
    curves = _curves_stub()
    figures = {f.key: f for f in _figures(_table_stub(), curves, activity, {**SIZES["small"], "steps": steps})}
    assert figures["reset_jump_spot"].value == pytest.approx(4.0)  # step 0 left out
    assert figures["reset_jump_options"].value == pytest.approx((4 + 2) / (2 + 4))  # resets 20, 40 / steps 19, 39
    assert figures["kfac_steps_to_adam"].value == 20.0  # the first DH-KFAC point at or below Adam's last


def _curves_stub():
    import pandas as pd

    return pd.DataFrame([{"optimizer": "dhkfac", "seed": 0, "step": s, "wall_s": s, "val_loss": v}
                         for s, v in ((10, 3.0), (20, 1.9), (30, 1.5))]
                        + [{"optimizer": "adam", "seed": 0, "step": s, "wall_s": s, "val_loss": v}
                           for s, v in ((100, 2.5), (200, 2.0))])


def _table_stub():
    import pandas as pd

    rows = [{"strategy": k, "seed": 0, "std": s, "std_se": 0.01}
            for k, s in (("unhedged", 2.0), ("spot_only", 1.0), ("spot_and_options", 0.9), ("options_removed", 1.1),
                         ("option_std_reduction", 0.1))]
    return pd.DataFrame(rows)

