"""The Rasa Pro flows fragment is valid Rasa Pro YAML, read by Pro's own readers.

docs/flows-fragment.yml goes through Pro's flow reader (its JSON schema and
flow building) and Pro's flow validation against docs/flows-domain-fragment.yml
read as a Pro domain; every action, response and slot the flows use must be in
that domain. Running the flows needs a trained CALM bot, which needs the rasa
command line, which Rasa Pro runs only with a license: that is not done here.
Runs in the Rasa Pro environment (make test-pro); Rasa 3.6 has no flows.
"""

import inspect
from typing import Any, Set

import pytest

from tests.conftest import RASA_PRO
from tests.docs.support import DOCS, read

pytestmark = pytest.mark.skipif(
    RASA_PRO is None, reason="Rasa Pro's flows: runs in the Rasa Pro environment (make test-pro)"
)


def flows() -> Any:
    from rasa.shared.core.flows.yaml_flows_io import YAMLFlowsReader

    return YAMLFlowsReader.read_from_string(read(DOCS / "flows-fragment.yml"))


def domain() -> Any:
    from rasa.shared.core.domain import Domain

    return Domain.from_yaml(read(DOCS / "flows-domain-fragment.yml"))


def test_the_human_handoff_pattern_runs_the_shipped_action() -> None:
    pattern = flows().flow_by_id("pattern_human_handoff")
    assert pattern is not None
    actions = [getattr(step, "action", None) for step in pattern.steps]
    assert actions[-1] == "action_escalate_to_human"
    assert "utter_handoff_connecting" in actions


def test_the_end_of_a_chat_is_answered_by_a_flow_the_channel_s_intent_starts() -> None:
    ended = flows().flow_by_id("omnidesk_chat_ended")
    assert ended is not None
    assert "omnidesk_chat_ended" in str(ended.nlu_triggers)


def test_the_flows_pass_rasa_pro_s_validation_against_the_domain_fragment() -> None:
    the_flows = flows()
    if "domain" in inspect.signature(the_flows.validate).parameters:
        the_flows.validate(domain())
    else:  # Rasa Pro before 3.21 validates flows without the domain
        the_flows.validate()


def test_every_action_response_and_slot_the_flows_use_is_in_the_domain_fragment() -> None:
    the_domain = domain()
    used_actions: Set[str] = set()
    used_slots: Set[str] = set()
    for flow in flows().underlying_flows:
        for step in flow.steps:
            if getattr(step, "action", None):
                used_actions.add(step.action)
            for slot in getattr(step, "slots", None) or []:
                used_slots.add(slot["key"])
    assert used_actions <= set(the_domain.action_names_or_texts), used_actions
    assert used_slots <= {slot.name for slot in the_domain.slots}, used_slots
    escalate_says = {
        "utter_handoff_connected",
        "utter_handoff_no_agents",
        "utter_handoff_failed",
        "utter_handoff_already_active",
    }
    channel_says = {"utter_omnidesk_delivery_failed", "utter_omnidesk_agent_wait"}
    assert escalate_says | channel_says <= set(the_domain.responses)
