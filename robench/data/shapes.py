"""The embedded procedural dataset (being written)."""
