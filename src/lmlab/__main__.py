"""`python -m lmlab` runs the same command line as the `lmlab` script."""

from lmlab.cli.main import main

if __name__ == "__main__":
    main()
