"""Docs stay in step with the code: the config reference is generated, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from lion.config import config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date():
    assert (ROOT / "docs" / "config.md").read_text().strip() == config_reference().strip(), (
        "docs/config.md is stale: run `python -m lion.config --reference > docs/config.md`"
    )


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.DOTALL)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_every_prompt_template_is_documented():
    doc = (ROOT / "prompts" / "README.md").read_text()
    for f in (ROOT / "prompts").glob("*.txt"):
        assert f"`{f.name}`" in doc, f"prompts/README.md does not document {f.name}"
