"""The speed wing: optional patches over transformers and PEFT that change no number (see the tests)."""
