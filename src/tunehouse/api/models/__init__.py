"""/v1/models endpoints."""
