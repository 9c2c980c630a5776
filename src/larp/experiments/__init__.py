"""Experiments: multi-run studies built from the library's trainers and evaluation (``larp experiment ...``)."""
