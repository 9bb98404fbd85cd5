"""/v1/completions endpoints."""
