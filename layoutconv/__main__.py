"""``python -m layoutconv``: the command line (see ``layoutconv --help``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
