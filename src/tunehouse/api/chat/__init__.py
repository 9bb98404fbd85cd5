"""/v1/chat endpoints."""
