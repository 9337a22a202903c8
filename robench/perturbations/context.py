"""context corruptions (being written)."""
