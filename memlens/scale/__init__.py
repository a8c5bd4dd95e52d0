"""Scans beyond one process: streaming tables, shards and their merge, the Ray engine."""
