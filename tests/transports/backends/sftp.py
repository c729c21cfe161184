"""Placeholder: filled in by the issue that adds this transport/server."""
