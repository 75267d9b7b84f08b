"""Pricers at zero interest rate, vectorised in TensorFlow, float64 capable.

* Black-Scholes: :func:`bs_price`, :func:`bs_delta`, :func:`bs_gamma`, :func:`bs_vega`,
  :func:`bs_theta`, :func:`bs_implied_vol`.
* Heston European options by a Fourier method: :func:`heston_price` (numpy out) and
  :func:`heston_price_tf` (tensor out, usable in tf.function).
* Floating-grid premium tables: :class:`HestonPremiumTable`.
* The fixed-strike lookback call in closed form (continuous or, approximately, discrete monitoring):
  :func:`lookback_call_price`, :func:`lookback_call_greeks`.
"""

from deephedge_tf.pricing.black_scholes import bs_delta, bs_gamma, bs_implied_vol, bs_price, bs_theta, bs_vega
from deephedge_tf.pricing.heston import heston_price, heston_price_tf
from deephedge_tf.pricing.lookback import lookback_call_greeks, lookback_call_price
from deephedge_tf.pricing.tables import HestonPremiumTable

__all__ = [
    "HestonPremiumTable",
    "bs_delta",
    "bs_gamma",
    "bs_implied_vol",
    "bs_price",
    "bs_theta",
    "bs_vega",
    "heston_price",
    "heston_price_tf",
    "lookback_call_greeks",
    "lookback_call_price",
]
