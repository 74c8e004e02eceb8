"""`python -m chainrule` runs the command line."""

from ._cli import main

main()
