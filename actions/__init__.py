"""The example bot's custom actions: ``rasa run actions`` loads this package.

``action_escalate_to_human`` ships with rasa-omnidesk; one import registers it,
and a bot with its own actions package adds the same line there.
"""

from connectors.omnidesk.action import ActionEscalateToHuman

__all__ = ["ActionEscalateToHuman"]
