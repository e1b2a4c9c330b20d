"""The example atoms pass a ticket through a file and through an environment variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_producer_and_consumer(node, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLIGHT_", "TICKET_", "SALES_"))}
    env.update(FLIGHT_URI=node.uri, FLIGHT_NAMESPACE="analytics")
    ticket_file = tmp_path / "ticket.txt"

    produced = run("producer.py", {**env, "TICKET_FILE": str(ticket_file)}, "--rows", "5000")
    assert produced.returncode == 0, produced.stderr
    ticket = produced.stdout.strip()
    assert ticket.startswith("ads1:analytics/sales@")
    assert ticket_file.read_text().strip() == ticket

    via_file = run("consumer.py", {**env, "TICKET_FILE": str(ticket_file)})
    assert via_file.returncode == 0, via_file.stderr
    assert "5000 rows" in via_file.stdout

    via_env = run("consumer.py", {**env, "SALES_TICKET": ticket})
    assert via_env.returncode == 0, via_env.stderr
    assert via_env.stdout == via_file.stdout

    missing = run("consumer.py", env, "--ticket", "ads1:analytics/sales@999999")
    assert missing.returncode == 2
    assert "999999" in missing.stderr
