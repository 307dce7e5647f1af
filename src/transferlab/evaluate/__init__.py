"""Scores on the test split, their intervals, the learning-curve sweep, the report's findings."""
