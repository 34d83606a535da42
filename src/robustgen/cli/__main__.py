"""``python -m robustgen.cli`` (as torchrun launches it)."""

from robustgen.cli.app import main

main()
