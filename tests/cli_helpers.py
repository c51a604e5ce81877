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


def run_captured(args: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``modelport ARGS`` without pytest's capture fixtures (usable in module-scoped
    fixtures): the CLI's rich consoles write to whatever ``sys.stdout``/``sys.stderr`` are when they print."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
    return code, out.getvalue(), err.getvalue()
