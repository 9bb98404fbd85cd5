"""The OpenAI-compatible HTTP surface. Thin: parse, call a service, shape the response."""
