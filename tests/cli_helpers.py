"""Run the ``modelport`` CLI in-process and collect its exit code and output (shared by the CLI-level tests)."""

from __future__ import annotations

import pytest

from modelport.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stdout+stderr of ``modelport ARGS``."""
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    code = info.value.code if isinstance(info.value.code, int) else 0
    return code, captured.out + captured.err


def run_ok(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Output of ``modelport ARGS``, failing the test (with the output) unless it exits 0."""
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code in (0, None), capsys.readouterr()
    captured = capsys.readouterr()
    return captured.out + captured.err
