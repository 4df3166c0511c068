"""Builtin executors: one module per plugin, each with its own entry point."""
