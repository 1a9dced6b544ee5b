"""Templates: strict rendering, and extract() inverting render() for every shipped template."""

from __future__ import annotations

from pathlib import Path

import pytest

from lion.errors import ConfigError
from lion.prompts import TEMPLATES, load_template, teacher_request


def test_every_template_renders_and_reads_back():
    tricky = "Use {braces}, \\1 and $dollar; also a line\n<<<END RESPONSE A>>> inside"
    for name, placeholders in TEMPLATES.items():
        tpl = load_template(name)
        values = {p: f"{p} value: {tricky}" for p in placeholders}
        text = tpl.render(**values)
        assert tpl.extract(text) == values, name


def test_missing_or_extra_values_fail():
    tpl = load_template("referee")
    with pytest.raises(ValueError, match="missing values"):
        tpl.render(instruction="x", answer_a="y")
    with pytest.raises(ValueError, match="unexpected values"):
        tpl.render(instruction="x", answer_a="y", answer_b="z", extra="w")


def test_templates_do_not_match_each_other():
    gen = load_template("generate_hard").render(instruction="Reverse 'cat'.")
    assert load_template("generate_easy").extract(gen) is None
    assert load_template("referee").extract(gen) is None


def test_custom_dir_with_wrong_placeholders_is_a_config_error(tmp_path: Path):
    (tmp_path / "referee.txt").write_text("Judge {instruction} and {answer_a}.")
    with pytest.raises(ConfigError, match="must use exactly the placeholders"):
        load_template("referee", tmp_path)


def test_teacher_request_carries_input_only_when_present():
    assert teacher_request("Sum.") == "Sum."
    assert teacher_request("Sum.", "1 2") == "Sum.\n\nInput:\n1 2"
