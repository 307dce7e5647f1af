"""transferlab: cached frozen-feature transfer learning vs fine-tuning, reproducibly."""

__version__ = "0.1.0"
