"""Command line: `python -m janus_ov tiny|export|serve ...`."""

import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"tiny": "janus_ov.tiny", "export": "janus_ov.export", "serve": "janus_ov.serve"}
    if not argv or argv[0] not in commands:
        print("usage: python -m janus_ov {tiny,export,serve} [options]  (add --help to a command)", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
