"""``python -m workbench``: the ``workbench`` command."""

from .cli import main

main()
