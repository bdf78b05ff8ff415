"""The example bot's custom actions: ``rasa run actions`` loads this package.

``action_escalate_to_human`` (escalate_to_human.py) is the one rasa-omnidesk
ships; a bot that has its own actions package copies that module into it.
"""
