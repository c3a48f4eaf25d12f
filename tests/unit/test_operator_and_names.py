"""Checks that run before anything is written: operator names and user names."""

from __future__ import annotations

import pytest

from flows.customize_hub import name_problems
from hubfleet.audit import OperatorRefused, check_operator


@pytest.mark.parametrize("name", ["alice", "ops.team", "a@example.org", "ci-bot+1"])
def test_plain_operator_names_pass(name: str) -> None:
    assert check_operator(name) == name


@pytest.mark.parametrize(
    "name", ["schedule", "unknown(ui/api)", "automation:x", "a b", "", "x" * 65, "\u202eevil"]
)
def test_reserved_or_odd_operator_names_are_refused(name: str) -> None:
    with pytest.raises(OperatorRefused, match="give a plain name") as refused:
        check_operator(name)
    assert len(str(refused.value)) < 400  # a 20,000-character value is not echoed whole


def test_reserved_names_allowed_in_process_only_when_asked() -> None:
    assert check_operator("schedule", allow_reserved=True) == "schedule"


def test_user_names_with_invisible_or_path_characters_are_refused() -> None:
    assert name_problems("admins", ["alice", "bob@example.org"]) == []
    problems = name_problems("admins", ["ali\u202ece", "a/b", "x" * 101, "tab\there"])
    assert len(problems) == 4
    assert "U+202E" in problems[0] and "U+002F" not in problems[0]
    assert "contains U+002F" in problems[1]
    assert "1 to 100 characters" in problems[2]
    assert "U+0009" in problems[3]
