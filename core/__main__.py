"""``python -m laden`` runs the ``laden`` command."""

from laden.cli import main

main()
