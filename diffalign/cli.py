"""The ``diffalign`` command line."""
import sys


def main(argv=None):
    raise SystemExit("diffalign: no commands yet")


if __name__ == "__main__":
    main(sys.argv[1:])
