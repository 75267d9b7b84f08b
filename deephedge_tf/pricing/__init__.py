"""Pricers: Black-Scholes and Heston (Fourier), float64 capable."""
