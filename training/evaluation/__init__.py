"""Offline evaluation: full-ranking metrics, baselines, the paired bootstrap and the reports."""
