"""Managed processes: component folders, their uv environments, launched servers."""
