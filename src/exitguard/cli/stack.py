"""``exitguard stack secrets DIR``: the compose stack's credentials, outside the repository.

Writes random passwords, the bcrypt web configs Prometheus and Alertmanager check them
against, and placeholder webhook URL files; ``--check`` only reports what would stop the
stack reading them (or expose them). Never prints a password.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import EXIT_DIFFERENT, EXIT_OK, CliError, Commands, Formatter, non_empty


def add_parser(commands: Commands) -> None:
    stack = commands.add_parser(
        "stack", formatter_class=Formatter,
        help="create the monitoring stack's secrets directory (passwords, web configs)",
        description="'secrets DIR' creates DIR (mode 0700) with random passwords for Grafana,\n"
                    "Prometheus and Alertmanager, the servers' bcrypt web configs and\n"
                    "placeholder webhook URL files (files mode 0644: the containers read them\n"
                    "through compose secrets). Existing passwords and webhook URLs are kept.\n"
                    "Then: EXITGUARD_STACK_SECRETS_DIR=DIR docker compose up -d",
    )
    stack.add_argument("action", choices=("secrets",), metavar="secrets",
                       help="create or complete the secrets directory")
    stack.add_argument("directory", metavar="DIR", type=non_empty,
                       help="the secrets directory, outside the repository")
    stack.add_argument("--rotate", action="store_true",
                       help="replace the passwords too (then recreate the containers)")
    stack.add_argument("--check", action="store_true",
                       help="write nothing: report missing files and wrong permissions")
    stack.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..artefacts import stack_secrets

    directory = Path(args.directory)
    if args.check:
        if not directory.is_dir():
            raise CliError(f"stack secrets: no such directory: {directory}")
        problems = stack_secrets.check_permissions(directory)
        for problem in problems:
            print(problem)
        return EXIT_DIFFERENT if problems else EXIT_OK
    try:
        written = stack_secrets.write_stack_secrets(directory, rotate=args.rotate)
    except ImportError:
        raise CliError("stack secrets needs bcrypt: pip install 'exitguard[stack]'") from None
    except OSError as exc:
        raise CliError(f"stack secrets: {exc.strerror or exc}: {exc.filename or directory}"
                       ) from None
    for item in written:
        print(f"{item.action:8} {directory / item.name}")
    print(f"next: EXITGUARD_STACK_SECRETS_DIR={directory} docker compose up -d")
    return EXIT_OK
