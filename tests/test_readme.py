"""The README stays true: its configuration reference and its two fresh-machine commands."""

import pathlib
import re

from beam_pixels.config import KEYS

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_configuration_reference_lists_every_key_with_its_default():
    for key in KEYS:
        row = next((line for line in README.splitlines() if line.startswith(f"| `{key.name}` |")), None)
        assert row is not None, f"README lacks {key.name}: run python scripts/update_config_reference.py"
        default = f"`{key.default}`" if key.default else "(empty)"
        assert default in row, f"README gives another default for {key.name}: {row}"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"python -m pytest[^\n]*", ci).group(0)
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert len(first_block) == 2, "the README opens with exactly two commands"
    assert "beam-pixels demo" in first_block[0]
    assert command in first_block[1], "the README's second command must be the test command of .ci/run"
