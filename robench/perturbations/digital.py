"""digital corruptions (being written)."""
