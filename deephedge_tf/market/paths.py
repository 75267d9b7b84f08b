"""MarketPaths: the one structure every market (simulated or historical) returns.

Shape convention (used throughout the library)
----------------------------------------------
Tensors are *time-major*.  With ``T`` time steps of length ``dt`` (years) on the grid
``t_0 = 0 < t_1 < ... < t_T`` and ``B`` paths:

* quantities observed on the grid are ``[T + 1, B]`` (index ``k`` is time ``t_k``);
* per-step quantities (trades, premiums, returns of hedging instruments) are ``[T, B, N]`` for
  ``N`` instruments, index ``k`` meaning "decided at ``t_k``";
* per-path results (payoff, PnL, costs) are ``[B]``.

Policies never learn where paths came from: a Heston simulator, a GBM simulator and windows cut
from a real price series all return a :class:`MarketPaths`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import tensorflow as tf

from deephedge_tf.dtypes import to_float


@dataclasses.dataclass(frozen=True)
class MarketPaths:
    """Paths of one underlying on a regular time grid.

    Attributes:
      dt: step length in years (a Python float, static).
      spot: ``[T + 1, B]`` price of the underlying.
      variance: ``[T + 1, B]`` instantaneous variance the hedger may observe: the model variance
        (Heston), ``sigma**2`` (GBM), or a realised-variance estimate (historical data).
      integrated_variance: ``[T + 1, B]`` cumulative variance ``int_0^{t_k} v ds`` (scheme-consistent
        for simulators; cumulative squared log returns for historical data).  Starts at 0.
      features: extra ``[T + 1, B]`` observables by name (e.g. ``"realized_vol_20"``).

    >>> import tensorflow as tf
    >>> spot = tf.constant([[100.0, 100.0], [110.0, 95.0], [105.0, 90.0]])  # 2 steps, 2 paths
    >>> paths = MarketPaths(dt=0.5, spot=spot, variance=tf.fill([3, 2], 0.04), integrated_variance=tf.zeros([3, 2]))
    >>> paths.num_steps, paths.batch_size, paths.times.numpy()
    (2, 2, array([0. , 0.5, 1. ], dtype=float32))
    >>> paths.log_returns.numpy().round(4)  # [T, B]
    array([[ 0.0953, -0.0513],
           [-0.0465, -0.0541]], dtype=float32)
    >>> paths.slice_paths(1, 2).spot.numpy()[:, 0]
    array([100.,  95.,  90.], dtype=float32)
    """

    dt: float
    spot: tf.Tensor
    variance: tf.Tensor
    integrated_variance: tf.Tensor
    features: Mapping[str, tf.Tensor] = dataclasses.field(default_factory=dict)

    # -- static shape helpers -------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """Number of time steps ``T`` (static)."""
        return int(self.spot.shape[0]) - 1

    @property
    def batch_size(self) -> Optional[int]:
        """Number of paths ``B`` (static, or None inside a graph with unknown batch)."""
        return self.spot.shape[1]

    @property
    def dtype(self) -> tf.DType:
        return self.spot.dtype

    @property
    def times(self) -> tf.Tensor:
        """``[T + 1]`` grid times in years."""
        return tf.range(self.num_steps + 1, dtype=self.dtype) * to_float(self.dt, self.dtype)

    @property
    def log_returns(self) -> tf.Tensor:
        """``[T, B]`` log returns ``log(S_{k+1} / S_k)``."""
        return tf.math.log(self.spot[1:] / self.spot[:-1])

    # -- structure ---------------------------------------------------------------------
    def slice_paths(self, start: int, stop: int) -> "MarketPaths":
        """Paths ``start:stop`` (along the batch axis)."""
        return self.map(lambda x: x[:, start:stop])

    def map(self, fn) -> "MarketPaths":
        """Applies ``fn`` to every ``[T + 1, B]`` tensor; keeps ``dt``."""
        return MarketPaths(
            dt=self.dt,
            spot=fn(self.spot),
            variance=fn(self.variance),
            integrated_variance=fn(self.integrated_variance),
            features={k: fn(v) for k, v in self.features.items()},
        )

    @staticmethod
    def concat(parts) -> "MarketPaths":
        """Concatenates along the batch axis; all parts must share ``dt`` and feature names."""
        parts = list(parts)
        first = parts[0]
        for p in parts[1:]:
            if p.dt != first.dt or set(p.features) != set(first.features):
                raise ValueError("MarketPaths.concat: parts differ in dt or feature names")
        cat = lambda xs: tf.concat(xs, axis=1)  # noqa: E731
        return MarketPaths(
            dt=first.dt,
            spot=cat([p.spot for p in parts]),
            variance=cat([p.variance for p in parts]),
            integrated_variance=cat([p.integrated_variance for p in parts]),
            features={k: cat([p.features[k] for p in parts]) for k in first.features},
        )

    # tf.nest protocol: lets MarketPaths flow through tf.function, tf.data and Keras fit
    # as a structure of tensors.  dt and the feature names are static metadata.
    def __tf_flatten__(self):
        names = tuple(sorted(self.features))
        components = (self.spot, self.variance, self.integrated_variance) + tuple(
            self.features[n] for n in names
        )
        return (self.dt, names), components

    @classmethod
    def __tf_unflatten__(cls, metadata, components):
        dt, names = metadata
        spot, variance, integrated_variance = components[:3]
        return cls(
            dt=dt,
            spot=spot,
            variance=variance,
            integrated_variance=integrated_variance,
            features=dict(zip(names, components[3:])),
        )


def validate_paths(paths: MarketPaths) -> None:
    """Checks shapes and values; raises ValueError naming the first inconsistent field."""
    shape = paths.spot.shape
    if shape.rank != 2:
        raise ValueError(f"MarketPaths.spot must be [T + 1, B]; got shape {shape}")
    for name in ("variance", "integrated_variance"):
        s = getattr(paths, name).shape
        if s != shape:
            raise ValueError(f"MarketPaths.{name} has shape {s}; expected {shape} like spot")
    for name, v in paths.features.items():
        if v.shape != shape:
            raise ValueError(f"MarketPaths.features[{name!r}] has shape {v.shape}; expected {shape}")
    if not paths.dt > 0:
        raise ValueError(f"MarketPaths.dt must be > 0; got {paths.dt}")
