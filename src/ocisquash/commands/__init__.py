"""One module per ``ocisquash`` subcommand: ``add_parser(subparsers)`` and ``run(args)``."""
