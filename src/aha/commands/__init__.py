"""Sub-commands of the ``aha`` CLI. Each module has ``add_parser(subparsers)`` and ``run(args) -> int``."""
