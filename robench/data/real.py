"""Real datasets from their standard on-disk formats (being written)."""
