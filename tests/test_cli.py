"""verify.cli.exit_with: Ctrl-C in a verify tool ends with one line that says what was kept, exit 130."""

import pytest

from verify.cli import exit_with


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        exit_with(interrupted, "nothing was written; rerun the same command")
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: nothing was written; rerun the same command"


def test_the_exit_code_passes_through():
    with pytest.raises(SystemExit) as info:
        exit_with(lambda: 1, "unused")
    assert info.value.code == 1
