"""The bottom layer: errors, atomic file writes, audio and image I/O, offline assets, typed configs.

Nothing here imports another part of dmlm (`tests/test_layers.py` checks the whole package's
import direction).
"""
