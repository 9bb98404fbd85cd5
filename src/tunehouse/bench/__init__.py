"""Benchmarks that drive the trainer against its peers, kept apart from the trainer (nanoGPT's bench.py)."""
