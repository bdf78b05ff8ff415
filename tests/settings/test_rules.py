"""The rules both processes share: each is written once, in connectors/omnidesk/rules.py."""

import pytest

from connectors.omnidesk import rules
from connectors.omnidesk.channel.hookpoints import (
    HookpointFields,
    HookpointInputError,
    parse_typing,
)
from connectors.omnidesk.client import OmnideskError, OmnideskValidationError
from connectors.omnidesk.settings import OmnideskSettings

REQUIRED = {
    "OMNIDESK_CHAT_ACCOUNT_TOKEN": "AccountToken1234567890",
    "OMNIDESK_CHAT_SERVER_TOKEN": "ServerToken0987654321",
    "OMNIDESK_PUBLIC_URL": "https://bot.example.com",
    "OMNIDESK_HOOKPOINT_SECRET": "hookpoint-secret-0123456789abcdef",
}
SESSION_ID = "rasa-0123456789abcdef0123456789abcdef"


# --- one error shape --------------------------------------------------------------


def test_a_broken_rule_names_the_field_the_rule_and_a_status():
    error = rules.FieldRuleError("message", "must not be empty")

    assert (error.field, error.rule, error.status) == ("message", "must not be empty", 400)
    assert str(error) == "message: must not be empty"
    assert isinstance(error, ValueError)
    assert rules.FieldRuleError("file", "too large", status=413).status == 413


def test_the_channel_and_the_client_raise_the_same_shape_in_their_own_hierarchy():
    hookpoint = HookpointInputError("Typing", "required")
    client = OmnideskValidationError("notifyUserNewChatEvent", "event", "must be one of x")

    assert isinstance(hookpoint, rules.FieldRuleError)
    assert (hookpoint.field, hookpoint.rule, hookpoint.status) == ("Typing", "required", 400)
    assert str(hookpoint) == "Typing: required"
    assert isinstance(client, rules.FieldRuleError)
    assert isinstance(client, OmnideskError)
    assert (client.field, client.rule, client.status) == ("event", "must be one of x", 400)
    assert client.call == "notifyUserNewChatEvent"
    assert client.retryable is False
    assert (
        str(client) == "Omnidesk notifyUserNewChatEvent failed: not sent: event: must be one of x"
    )


# --- true/false words ---------------------------------------------------------------

TRUE_WORDS = ["true", "TRUE", "1", "yes", " Yes ", "on", "ON"]
FALSE_WORDS = ["false", "False", "0", "no", "off", "Off"]


@pytest.mark.parametrize(
    ("word", "meaning"), [(w, True) for w in TRUE_WORDS] + [(w, False) for w in FALSE_WORDS]
)
def test_the_settings_and_the_typing_hookpoint_read_the_same_words(word, meaning):
    settings = OmnideskSettings.from_env({**REQUIRED, "OMNIDESK_AGENT_NAME_PREFIX": word})
    typing = parse_typing(HookpointFields(values={"sessionid": SESSION_ID, "typing": word}))

    assert rules.parse_bool("x", word) is meaning
    assert settings.agent_name_prefix is meaning
    assert typing.typing is meaning


@pytest.mark.parametrize("value", [True, False, 1, 0])
def test_yaml_booleans_and_numbers_are_booleans(value):
    assert rules.parse_bool("x", value) is bool(value)


@pytest.mark.parametrize("value", ["maybe", "", "2", 2, None, 1.0, "truthy"])
def test_anything_else_is_refused_naming_the_words(value):
    with pytest.raises(rules.FieldRuleError) as caught:
        rules.parse_bool("agent_name_prefix", value)

    assert caught.value.field == "agent_name_prefix"
    assert caught.value.rule == "must be true or false (also 1/0, yes/no, on/off)"


def test_a_typing_word_refused_by_the_hookpoint_is_shown_back():
    with pytest.raises(HookpointInputError) as caught:
        parse_typing(HookpointFields(values={"sessionid": SESSION_ID, "typing": "maybe"}))

    assert caught.value.status == 400
    assert str(caught.value) == (
        "Typing: must be true or false (also 1/0, yes/no, on/off), got 'maybe'"
    )


# --- file names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("photo.jpg", "photo.jpg"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\jo\\Factuur maart (é).pdf", "Factuur_maart_e_.pdf"),
        ("...", "file"),
        ("", "file"),
        (".hidden", "hidden"),
        ("naïve café.txt", "naive_cafe.txt"),
        ("李小龍.png", "png"),
        ("a" * 300 + ".png", "a" * 196 + ".png"),
        ("a" * 300 + "." + "x" * 20, "a" * 200),
    ],
)
def test_a_file_name_keeps_only_characters_that_need_no_quoting(given, safe):
    assert rules.safe_filename(given) == safe


# --- the upload check -------------------------------------------------------------------


def test_a_file_over_the_limit_is_413():
    with pytest.raises(rules.FieldRuleError) as caught:
        rules.check_upload(1025, "image/png", 1024)

    assert caught.value.field == "file"
    assert caught.value.status == 413
    assert caught.value.rule == "must be at most 1024 bytes, got 1025"
    assert rules.check_upload(1024, "image/png", 1024) == "image/png"


@pytest.mark.parametrize("content_type", ["png", "image/*", "", "image/", "text/plain extra"])
def test_a_content_type_that_is_no_concrete_mime_type_is_415(content_type):
    with pytest.raises(rules.FieldRuleError) as caught:
        rules.check_upload(10, content_type, 1024)

    assert (caught.value.field, caught.value.status) == ("file", 415)
    assert "must be a MIME type" in caught.value.rule


def test_a_type_outside_the_allowed_ones_is_415_naming_them():
    with pytest.raises(rules.FieldRuleError) as caught:
        rules.check_upload(10, "application/x-msdownload", 1024, ("image/*", "application/pdf"))

    assert caught.value.status == 415
    assert caught.value.rule == (
        "type application/x-msdownload not allowed; allowed: image/*, application/pdf"
    )


@pytest.mark.parametrize(
    ("content_type", "bare"),
    [
        ("text/plain; charset=utf-8", "text/plain"),
        ("Application/PDF; name=a.pdf", "application/pdf"),
        ("image/heic", "image/heic"),
    ],
)
def test_parameters_are_dropped_before_the_type_is_matched(content_type, bare):
    settings = OmnideskSettings.from_env(
        {**REQUIRED, "OMNIDESK_ALLOWED_UPLOAD_TYPES": "image/*,application/pdf,text/plain"}
    )

    assert rules.check_upload(10, content_type, 1024, settings.allowed_upload_types) == bare


def test_the_settings_accept_no_type_the_one_check_refuses():
    settings = OmnideskSettings.from_env({**REQUIRED, "OMNIDESK_ALLOWED_UPLOAD_TYPES": "image/*"})

    for content_type in ("image/", "image/*", "application/pdf", ""):
        with pytest.raises(rules.FieldRuleError):
            rules.check_upload_type(content_type, settings.allowed_upload_types)
