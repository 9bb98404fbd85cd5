"""The model catalog: which model ids exist and where their weights are."""
