"""The example bot's data is valid, and its domain holds the fragment teams copy."""

import os
import pathlib
import re
import subprocess
import sys
from typing import Any, Dict, List

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RASA = pathlib.Path(sys.executable).parent / "rasa"

# What `rasa data validate` may warn about, and why that is fine:
# - omnidesk_chat_ended has no NLU examples on purpose: only the channel sends it,
#   as /omnidesk_chat_ended{...}, which Rasa parses without NLU.
# - these responses are uttered by the action or the channel, which the validator
#   cannot see.
EXPECTED_WARNINGS = [
    re.compile(
        r"The intent 'omnidesk_chat_ended' is listed in the domain file, but is not found in the NLU training data"
    ),
    re.compile(
        r"The utterance '(utter_handoff_connected|utter_handoff_no_agents|utter_handoff_failed|"
        r"utter_handoff_already_active|utter_omnidesk_channel_not_served|utter_omnidesk_delivery_failed|"
        r"utter_omnidesk_agent_wait|"
        r"utter_ask_customer_email|utter_default)' is not used in any story or rule"
    ),
]


def load(path: pathlib.Path) -> Dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle)
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def by_name(items: List[Any]) -> Dict[str, Any]:
    """Intents and entities are listed as names or one-key mappings; key them by name."""
    named: Dict[str, Any] = {}
    for item in items:
        if isinstance(item, dict):
            [(name, value)] = item.items()
            named[name] = value
        else:
            named[item] = None
    return named


@pytest.mark.rasa_cli
def test_rasa_data_validate_passes_with_only_the_expected_warnings() -> None:
    env = dict(os.environ, SQLALCHEMY_SILENCE_UBER_WARNING="1")
    validated = subprocess.run(
        [str(RASA), "data", "validate", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = validated.stdout + validated.stderr

    assert validated.returncode == 0, output
    warnings = re.findall(r"UserWarning: (.*)", output)
    unexpected = [
        warning
        for warning in warnings
        if not any(pattern.search(warning) for pattern in EXPECTED_WARNINGS)
        and "Slot auto-fill has been removed" not in warning
    ]
    assert unexpected == []


def test_the_domain_holds_the_fragment_unchanged() -> None:
    fragment = load(ROOT / "docs" / "domain-fragment.yml")
    domain = load(ROOT / "domain.yml")

    for section in ("intents", "entities", "actions"):
        mine = by_name(domain.get(section, []))
        for name, value in by_name(fragment[section]).items():
            assert name in mine, f"domain.yml lacks {section}: {name} of the fragment"
            assert mine[name] == value, f"domain.yml's {section}: {name} differs from the fragment"
    for section in ("slots", "responses"):
        for name, value in fragment[section].items():
            assert name in domain[section], f"domain.yml lacks {section}: {name} of the fragment"
            assert domain[section][name] == value, (
                f"domain.yml's {section}: {name} differs from the fragment"
            )


def test_the_fragment_names_what_the_code_uses() -> None:
    from connectors.omnidesk import handoff

    fragment = load(ROOT / "docs" / "domain-fragment.yml")

    assert handoff.SLOT_HANDOFF_ACTIVE in fragment["slots"]
    assert handoff.SLOT_CHAT_SESSION_ID in fragment["slots"]
    assert fragment["slots"][handoff.SLOT_HANDOFF_OUTCOME]["values"] == [
        outcome.value for outcome in handoff.HandoffOutcome
    ]
    assert handoff.INTENT_CHAT_ENDED in by_name(fragment["intents"])
    assert handoff.ENTITY_HANDOFF_OUTCOME in fragment["entities"]


def test_the_fragment_is_a_domain_rasa_accepts() -> None:
    from rasa.shared.core.domain import Domain

    domain = Domain.load(str(ROOT / "docs" / "domain-fragment.yml"))

    assert "action_escalate_to_human" in domain.user_actions
    assert "utter_handoff_ended" in domain.responses


def test_no_slot_mapping_makes_rasa_run_the_escalation_on_every_turn() -> None:
    # A custom mapping that names an action makes Rasa run that action on every
    # customer turn to fill the slot: the customer would be escalated again and again.
    for path in (ROOT / "domain.yml", ROOT / "docs" / "domain-fragment.yml"):
        for name, slot in load(path)["slots"].items():
            for mapping in slot["mappings"]:
                assert "action" not in mapping, (
                    f"{path.name}: slot {name} names an action in a mapping"
                )
