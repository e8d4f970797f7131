"""Explaining errors: per-step attribution, one-row explanations and the analyses of a run."""
