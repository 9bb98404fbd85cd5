"""tunehouse: OpenAI-compatible fine-tuning and serving of open-weight models, self-hosted."""

__version__ = "0.1.0"
