"""Local fakes of the APIs behind Rasa's customer channels, and how to point each client at them.

telegram.py (Bot API), graph.py (Messenger Send API), slack.py (Web API and
signed Events API requests), twilio.py (Messages and status callbacks),
botframework.py (OpenID keys, tokens and the connector); fake_api.py is what
they share, redirect.py points the clients at them, on_fakes.py runs a command
(``rasa run``) with them pointed so.
"""
