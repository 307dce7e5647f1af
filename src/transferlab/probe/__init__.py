"""Frozen features and the scikit-learn head trained on them."""
