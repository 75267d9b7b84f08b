"""Derivatives (payoffs on paths) and hedging instruments."""
