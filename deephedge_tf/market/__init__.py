"""Markets: simulators and historical data, all returning :class:`MarketPaths` (time-major ``[T + 1, B]``)."""

from deephedge_tf.market.gbm import simulate_gbm
from deephedge_tf.market.heston import heston_expected_variance, simulate_heston
from deephedge_tf.market.historical import HistoricalMarket, load_price_series, load_sp500
from deephedge_tf.market.paths import MarketPaths, validate_paths
from deephedge_tf.market.random import path_normals

__all__ = [
    "HistoricalMarket",
    "MarketPaths",
    "heston_expected_variance",
    "load_price_series",
    "load_sp500",
    "path_normals",
    "simulate_gbm",
    "simulate_heston",
    "validate_paths",
]
