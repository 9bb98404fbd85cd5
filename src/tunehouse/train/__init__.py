"""The trainer: encoded examples → masked-loss steps → adapter or weights, metrics and checkpoints."""
