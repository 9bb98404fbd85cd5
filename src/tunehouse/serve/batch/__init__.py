"""Continuous batching: a batched forward pass over many sequences, their KV caches, LoRA rows and sampling."""
