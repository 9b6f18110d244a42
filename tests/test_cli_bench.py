"""``voice-bridge bench``: the product imports the benchmark harness only when asked, and says where it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent_voice_bridge import cli


def test_bench_without_the_harness_says_in_one_line_how_to_run_it(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "CHECKOUT", tmp_path)  # an installed package: no bench/ beside it
    monkeypatch.setitem(sys.modules, "bench", None)  # and none on the path
    monkeypatch.setitem(sys.modules, "bench.__main__", None)  # nor already imported by another test in this process
    assert cli.main(["bench", "--quick"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "python -m bench" in said[0], said


def test_the_server_and_the_cli_do_not_import_the_harness() -> None:
    code = ("import sys, agent_voice_bridge.cli, agent_voice_bridge.server; "
            "assert 'bench' not in sys.modules, 'imported bench'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=Path(__file__).parent)
