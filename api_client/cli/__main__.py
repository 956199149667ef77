"""`python -m api_client.cli`: the `qfarm` command (bench/ starts workers this way)."""

from api_client.cli.commands import main

main()
