"""`python -m fleetbatch` is the `fleetbatch` command."""

from fleetbatch.cli import main

main()
