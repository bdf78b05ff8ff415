"""A local Bot Framework: OpenID keys, the token endpoint and the connector.

- ``GET /v1/.well-known/openidconfiguration`` and ``GET /v1/.well-known/keys``: the
  OpenID document and a JWKS with an RSA key made when the fake is created;
- ``POST /botframework.com/oauth2/v2.0/token``: client credentials of the bot's
  app id and password give a bearer token (else Azure AD's ``invalid_client``);
- ``POST /v3/conversations/<id>/activities[/<reply to>]``: the connector, which
  wants that token and answers ``{"id": ...}``, or the refusals below.

Rasa reads the first two through the module constants of
rasa.core.channels.botframework (``redirect.botframework``) and posts replies to
the serviceUrl of the customer's activity: ``inbound_activity`` signs one whose
serviceUrl is this fake, as the Bot Connector signs what it posts to the bot.
"""

import base64
import datetime
import itertools
import re
import secrets
import uuid
from typing import Any, Dict, Optional, Set, Tuple

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.channel_apis.fake_api import Answer, Call, FakeApi

APP_ID = "00000000-0000-4000-8000-00000000b07f"
APP_PASSWORD = "fake-bot-framework-app-password"
ISSUER = "https://api.botframework.com"
TOKEN_PATH = "/botframework.com/oauth2/v2.0/token"
OPENID_PATH = "/v1/.well-known/openidconfiguration"
KEYS_PATH = "/v1/.well-known/keys"


def connector_error(status: int, code: str, message: str, **headers: str) -> Answer:
    return Answer(status, {"error": {"code": code, "message": message}}, headers)


# The bot was removed from the conversation (Teams: the app was uninstalled).
NOT_IN_ROSTER = connector_error(
    403, "BotNotInConversationRoster", "The bot is not part of the conversation roster."
)
BOT_DISABLED = connector_error(403, "BotDisabledByAdmin", "The tenant admin disabled this bot")
CONVERSATION_NOT_FOUND = connector_error(404, "ConversationNotFound", "Conversation not found.")
UNAUTHORIZED = Answer(401, {"message": "Authorization has been denied for this request."})
INVALID_CLIENT = Answer(
    401,
    {
        "error": "invalid_client",
        "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret "
        "being sent in the request is the client secret value, not the client secret ID.",
        "error_codes": [7000215],
    },
)


def throttled(retry_after: int = 1) -> Answer:
    return connector_error(
        429, "Throttled", "Too many requests.", **{"Retry-After": str(retry_after)}
    )


_ACTIVITIES = re.compile(r"^/v3/conversations/(?P<conversation>[^/]+)/activities(/[^/]+)?$")


class BotFrameworkApi(FakeApi):
    """Bot Framework for one bot, ``app_id`` and ``app_password``, with its own signing key."""

    name = "Bot Framework"

    def __init__(self, app_id: str = APP_ID, app_password: str = APP_PASSWORD) -> None:
        super().__init__()
        self.app_id = app_id
        self.app_password = app_password
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = f"fake-{secrets.token_hex(4)}"
        self.tokens: Set[str] = set()
        self._activity_ids = itertools.count(1)

    @property
    def service_url(self) -> str:
        """The serviceUrl of the activities it signs: where the bot's replies go."""
        return self.url + "/"

    @property
    def openid_url(self) -> str:
        return self.url + OPENID_PATH

    def identify(self, call: Call) -> Tuple[Optional[str], Optional[str]]:
        if call.method == "GET" and call.path == OPENID_PATH:
            return "openid", None
        if call.method == "GET" and call.path == KEYS_PATH:
            return "keys", None
        if call.method == "POST" and call.path == TOKEN_PATH:
            return "token", None
        match = _ACTIVITIES.match(call.path)
        if call.method == "POST" and match:
            return "activities", match["conversation"]
        return None, None

    def authorize(self, call: Call) -> Optional[Answer]:
        if call.api_method == "token":
            given = (call.form.get("client_id"), call.form.get("client_secret"))
            return None if given == (self.app_id, self.app_password) else INVALID_CLIENT
        if call.api_method == "activities":
            bearer = call.headers.get("Authorization", "")
            return (
                None if bearer.startswith("Bearer ") and bearer[7:] in self.tokens else UNAUTHORIZED
            )
        return None

    def unknown(self, call: Call) -> Answer:
        return Answer(404, {"message": f"No HTTP resource was found that matches {call.path}"})

    def succeed(self, call: Call) -> Answer:
        if call.api_method == "openid":
            return Answer(200, self.openid_configuration())
        if call.api_method == "keys":
            return Answer(200, {"keys": [self.public_jwk()]})
        if call.api_method == "token":
            token = secrets.token_urlsafe(24)
            self.tokens.add(token)
            body = {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599}
            return Answer(200, {**body, "access_token": token})
        return Answer(200, {"id": f"1:{next(self._activity_ids)}"})

    def openid_configuration(self) -> Dict[str, Any]:
        return {
            "issuer": ISSUER,
            "authorization_endpoint": "https://invalid.botframework.com",
            "jwks_uri": self.url + KEYS_PATH,
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        }

    def public_jwk(self) -> Dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.key_id,
            "n": _b64url(numbers.n),
            "e": _b64url(numbers.e),
            "endorsements": ["msteams"],
        }

    def inbound_activity(
        self,
        text: str,
        conversation_id: str = "a:1FakeTeamsConversation",
        user_id: str = "29:1FakeTeamsUser",
        user_name: str = "Customer",
    ) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """A customer's Teams message as the Bot Connector posts it to the bot: the activity
        and its headers, with an RS256 JWT for this bot's app id in Authorization."""
        activity = {
            "type": "message",
            "id": str(uuid.uuid4()),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "serviceUrl": self.service_url,
            "channelId": "msteams",
            "from": {"id": user_id, "name": user_name},
            "conversation": {"id": conversation_id, "conversationType": "personal"},
            "recipient": {"id": f"28:{self.app_id}", "name": "Omnidesk Test"},
            "text": text,
            "channelData": {"tenant": {"id": "00000000-0000-4000-8000-0000000000te"}},
        }
        return activity, {"Authorization": f"Bearer {self.connector_token()}"}

    def connector_token(self, audience: Optional[str] = None, lifetime: int = 3600) -> str:
        """The JWT the Bot Connector sends to the bot, signed with this fake's key."""
        now = datetime.datetime.now(datetime.timezone.utc)
        claims = {
            "iss": ISSUER,
            "aud": audience or self.app_id,
            "serviceurl": self.service_url,
            "nbf": now - datetime.timedelta(minutes=5),
            "iat": now,
            "exp": now + datetime.timedelta(seconds=lifetime),
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.key_id})


def _b64url(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
