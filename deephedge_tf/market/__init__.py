"""Markets: simulators and historical data; all return MarketPaths."""
