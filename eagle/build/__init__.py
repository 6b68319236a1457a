"""Checkpoint builders and head trainers: tooling beside the engine, which never imports this package."""
