"""Helpers for tests, demos and benchmarks: tiny random-weight VLMs built offline from configs."""
