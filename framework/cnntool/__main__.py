"""`python -m cnntool` runs the command line."""

from cnntool.cli import main

main()
