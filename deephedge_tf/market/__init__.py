"""Markets: simulators and historical data, all returning :class:`MarketPaths` (time-major ``[T + 1, B]``).

Market objects (the protocol: :mod:`deephedge_tf.market.models`): :class:`GBM`, :class:`Heston`,
:class:`HistoricalPaths`, and :class:`deephedge_tf.market.rough_bergomi.RoughBergomi`.
"""

from deephedge_tf.market.gbm import simulate_gbm
from deephedge_tf.market.heston import heston_expected_variance, simulate_heston
from deephedge_tf.market.historical import HistoricalMarket, HistoricalPaths, load_price_series, load_sp500
from deephedge_tf.market.models import GBM, Heston
from deephedge_tf.market.paths import MarketPaths, validate_paths
from deephedge_tf.market.random import path_normals

__all__ = [
    "GBM",
    "Heston",
    "HistoricalMarket",
    "HistoricalPaths",
    "MarketPaths",
    "heston_expected_variance",
    "load_price_series",
    "load_sp500",
    "path_normals",
    "simulate_gbm",
    "simulate_heston",
    "validate_paths",
]
