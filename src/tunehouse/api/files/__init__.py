"""/v1/files endpoints."""
