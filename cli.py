"""Runs lorascope's command-line app from a checkout: `python cli.py record ...`."""
from lorascope.cli import main

if __name__ == "__main__":
    main()
