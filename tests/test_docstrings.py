"""The runnable examples in the docstrings of the public API's modules run and print what they say
(doctest)."""

import doctest
import importlib

import pytest

MODULES = ["deephedge_tf.optimizers.capture", "deephedge_tf.optimizers.losses",
           "deephedge_tf.optimizers.train_step", "deephedge_tf.optimizers.woodbury", "deephedge_tf.objectives",
           "optimizer_bench.suite", "deephedge_tf.market.models", "deephedge_tf.instruments.derivatives",
           "deephedge_tf.instruments.hedges", "deephedge_tf.data", "deephedge_tf.evaluation.compare",
           "deephedge_tf.policies.base", "deephedge_tf.registry", "deephedge_tf.market.rough_bergomi",
           "deephedge_tf.files", "deephedge_tf.pricing.black_scholes", "deephedge_tf.pricing.heston",
           "deephedge_tf.hedger", "deephedge_tf.validation", "deephedge_tf.evaluation.metrics",
           "deephedge_tf.policies", "deephedge_tf.optimizers.kfac"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0  # the module does carry examples
