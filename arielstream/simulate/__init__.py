"""Simulated ADC2025 datasets with known truth (``arielstream simulate``)."""

from .dataset import simulate_dataset

__all__ = ["simulate_dataset"]
