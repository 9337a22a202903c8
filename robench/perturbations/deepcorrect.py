"""deepcorrect corruptions (being written)."""
