"""The ``laden`` command: one module per command group, parsing and printing only."""

from laden.cli.main import build_cli, emit_json, main, os_error_message

__all__ = ["build_cli", "emit_json", "main", "os_error_message"]
