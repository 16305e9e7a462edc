"""Yardsticks outside the package: ``make bench`` (:mod:`.bench`) and the notebook re-implementation."""
