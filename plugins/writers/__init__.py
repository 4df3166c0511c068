"""Builtin writers: one module per plugin, each with its own entry point."""
