"""The `qfarm` command line: the commands (commands.py) and how jobs,
groups and workers look on a terminal (render.py). It calls the application
(api_client.app: `Client`, compare) and never the database or the broker
itself."""

from api_client.cli.commands import cli, main

__all__ = ["cli", "main"]
