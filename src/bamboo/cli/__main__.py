"""`python -m bamboo.cli` runs the `bamboo` command."""

from bamboo.cli.main import app

app()
