"""The runnable examples in the docstrings of the public API's modules run and print what they say
(doctest)."""

import doctest
import importlib

import pytest

MODULES = ["deephedge_tf.optimizers.capture", "deephedge_tf.optimizers.losses", "deephedge_tf.optimizers.nested",
           "deephedge_tf.optimizers.train_step", "deephedge_tf.optimizers.woodbury", "deephedge_tf.objectives",
           "optimizer_bench.suite", "deephedge_tf.market.models", "deephedge_tf.instruments.derivatives",
           "deephedge_tf.instruments.hedges", "deephedge_tf.data", "deephedge_tf.evaluation.compare",
           "deephedge_tf.policies.base", "deephedge_tf.registry", "deephedge_tf.market.rough_bergomi",
           "deephedge_tf.files", "deephedge_tf.pricing.black_scholes", "deephedge_tf.pricing.heston",
           "deephedge_tf.hedger", "deephedge_tf.validation", "deephedge_tf.evaluation.metrics",
           "deephedge_tf.policies", "deephedge_tf.optimizers.kfac", "deephedge_tf.policies.base",
           "deephedge_tf.policies.baselines", "deephedge_tf.policies.bands", "deephedge_tf.policies.mlp",
           "deephedge_tf.policies.recurrent", "deephedge_tf.market.paths", "deephedge_tf.market.historical",
           "deephedge_tf.market.heston", "deephedge_tf.config", "deephedge_tf.export", "deephedge_tf.layers",
           "deephedge_tf.pricing.tables", "deephedge_tf.pricing.lookback", "deephedge_tf.features",
           "deephedge_tf.training", "deephedge_tf.run", "deephedge_tf.experiments",
           "deephedge_tf.experiments.price_vs_cost", "deephedge_tf.optimizers.averaging",
           "deephedge_tf.market.option_chain", "deephedge_tf.pricing.calibration",
           "deephedge_tf.evaluation.backtest", "deephedge_tf.distribute"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0  # the module does carry examples


def test_every_top_level_name_has_its_own_example():
    """Every public class and function of the top level carries a runnable example in its own
    docstring, in a module whose examples the test above runs."""
    import inspect

    import deephedge_tf as dh

    missing = []
    for name in dh.__all__:
        if name == "__version__":
            continue
        obj = getattr(dh, name)
        if ">>>" not in (inspect.getdoc(obj) or "") or obj.__module__ not in MODULES:
            missing.append(f"{name} ({obj.__module__})")
    assert not missing, "without a doctested example: " + ", ".join(missing)
