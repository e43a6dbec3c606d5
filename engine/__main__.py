"""`python -m engine`: the `liqstress` command line; with no arguments it runs the default scenario."""

from engine.cli import main

if __name__ == "__main__":
    main()
