"""`python -m hubfleet.cli`: the same as the `hubfleet` command."""

from hubfleet.cli.main import main

main()
