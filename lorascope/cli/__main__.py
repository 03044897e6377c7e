"""`python -m lorascope.cli ...` runs the same app as the `lorascope` command."""
from lorascope.cli import main

main()
