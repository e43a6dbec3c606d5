"""`python -m engine`: run the default scenario and print the summary table."""

from engine.cli import main

if __name__ == "__main__":
    main()
