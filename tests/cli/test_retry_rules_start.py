"""`bamboo serve` and `bamboo agents` refuse to start with a retry-rule file they cannot use, and say
why; nothing is bound or migrated before the check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bamboo.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["serve", "agents"])
def test_a_bad_rules_file_stops_the_start(command: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps({"rules": [{"source": "pilotErrorCode", "code": 1212, "action": "no_retry", "diag": "("}]})
    )
    result = runner.invoke(
        app, [command, "--home", str(tmp_path / "home")], env={"BAMBOO_RETRY_RULES_FILE": str(path)}
    )
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert f"retry rules file {path}: rule 1: 'diag' is not a valid regular expression" in output
    assert not (tmp_path / "home").exists()
