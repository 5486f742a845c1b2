"""Running `nanovlm` in-process for the fuzz suites, and the one rule every bad input must follow."""
from __future__ import annotations

from nanovlm import cli


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """main() in-process; argparse's own exits (bad flags, --help, --version) count like returns."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(code, err, allowed=(0, 2)):
    """Exit 0, or 2 with exactly one `error:` line (the last); never a traceback."""
    assert code in allowed, (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        error_lines = [line for line in lines if line.startswith("error:")]
        assert len(error_lines) == 1 and lines[-1].startswith("error:"), err


def assert_user_error(code, err, *fragments):
    """Exit 2, one `error:` line and nothing else on stderr, holding every fragment."""
    assert_clean(code, err, allowed=(2,))
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
