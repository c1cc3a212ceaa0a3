"""Materialized views: stored query results refreshed incrementally from snapshot diffs."""
