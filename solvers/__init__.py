"""Solvers: update rules, learning-rate policies, the training loop and snapshots."""
