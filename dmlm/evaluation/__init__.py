"""Evaluation: pure metric functions behind a text normalizer, and JSON reports."""
