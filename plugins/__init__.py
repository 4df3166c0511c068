"""Builtin strategies, registered through entry points like any third-party plugin."""
