"""The HTML report, what the network knows, and README's generated results."""
