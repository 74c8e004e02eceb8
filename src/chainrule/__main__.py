"""`python -m chainrule` runs the command line."""

from chainrule._cli.app import main

main()
