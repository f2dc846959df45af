"""Evaluation: which messages each attack gets, scoring reconstructions against the
ground truth the engine kept aside, and utility metrics."""
