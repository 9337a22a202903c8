"""sensor corruptions (being written)."""
