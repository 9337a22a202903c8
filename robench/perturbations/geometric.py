"""geometric corruptions (being written)."""
