"""``python -m robench`` (and ``torchrun -m robench``) runs the CLI."""

from robench.cli import main

main()
