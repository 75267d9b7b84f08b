"""Exceptions raised for bad user input.

Every error a user can trigger with a config file, a data file or a serving input is one of these,
raised before any tensor work starts, with a message that names the offending field, the value and
what is allowed.  Nothing below them is meant to be caught by users.
"""


class DeepHedgeError(ValueError):
    """Base class of all user-facing errors of deephedge_tf."""


class ConfigError(DeepHedgeError):
    """A config value is missing, misspelled, of the wrong type or out of range.

    Attributes:
      key: dotted key path, e.g. ``"market.heston.rho"``.
      value: the offending value (``None`` for a missing key).
      allowed: human-readable description of what is allowed.
    """

    def __init__(self, key: str, value, allowed: str):
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"config key '{key}': got {value!r}; allowed: {allowed}")


class DataError(DeepHedgeError):
    """A data file (price series, option chain) is missing, malformed or out of range."""
