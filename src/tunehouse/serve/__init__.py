"""Inference: one base model in memory per base id, fine-tuned LoRA adapters on top of it."""
