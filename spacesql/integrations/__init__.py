"""Integrations with other tools (Label Studio, ...); nothing here is imported by ``spacesql``."""
