"""The `tunehouse` command."""
