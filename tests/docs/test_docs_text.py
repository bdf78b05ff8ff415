"""The docs say only what is true of the code: names, defaults, commands, links.

Pure reading, plus two small subprocesses (the secret command, imports the way a
bot's project sees them). A failure names the page and what it claims.
"""

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import yaml

from connectors.omnidesk import rules
from connectors.omnidesk.settings import SETTING_KEYS, OmnideskSettings, env_var_for
from tests.docs.support import DOCS, ROOT, all_text, blocks, doc_files, normalised, read

# Names that look like settings but are something else, and say so.
NOT_SETTINGS = {
    "OMNIDESK_SANDBOX_READY": "the sandbox's ready line (docs/sandbox.md)",
}

VALID_ENV = {
    "OMNIDESK_CHAT_ACCOUNT_TOKEN": "a1B2c3D4e5F6",
    "OMNIDESK_CHAT_SERVER_TOKEN": "Z9y8X7w6V5u4",
    "OMNIDESK_PUBLIC_URL": "https://bot.example.com",
    "OMNIDESK_HOOKPOINT_SECRET": "docs-test-secret-0123456789abcdef",
}


def test_every_omnidesk_variable_the_docs_name_is_a_setting() -> None:
    settings = {env_var_for(key) for key in SETTING_KEYS}
    for path in doc_files():
        named = set(re.findall(r"(?<![A-Z_])OMNIDESK_[A-Z][A-Z_]*[A-Z]", read(path)))
        unknown = named - settings - set(NOT_SETTINGS)
        assert not unknown, f"{path.relative_to(ROOT)} names no such setting: {sorted(unknown)}"


def _configuration_rows() -> Dict[str, Tuple[str, str]]:
    """credentials key -> (variable, default cell) from docs/configuration.md's table."""
    rows: Dict[str, Tuple[str, str]] = {}
    for line in read(DOCS / "configuration.md").splitlines():
        match = re.match(r"\| `([a-z_]+)` \| `(OMNIDESK_[A-Z_]+)` \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3).strip())
    return rows


def _documented_default(cell: str) -> Any:
    if cell.startswith("**required**"):
        return dataclasses.MISSING
    if cell.startswith("none"):
        return None
    match = re.match(r"`([^`]*)`", cell)
    assert match, f"docs/configuration.md: cannot read the default {cell!r}"
    return match.group(1)


def test_every_setting_is_in_configuration_md_with_the_code_s_default() -> None:
    rows = _configuration_rows()
    assert set(rows) == set(SETTING_KEYS), (
        f"docs/configuration.md lacks {sorted(set(SETTING_KEYS) - set(rows))}, "
        f"lists no such setting {sorted(set(rows) - set(SETTING_KEYS))}"
    )
    for field in dataclasses.fields(OmnideskSettings):
        variable, cell = rows[field.name]
        assert variable == env_var_for(field.name)
        documented = _documented_default(cell)
        actual = field.default
        if documented is dataclasses.MISSING or documented is None:
            assert actual is documented, f"{field.name}: the docs say {cell!r}, the code {actual!r}"
        elif isinstance(actual, bool):
            assert documented == str(actual).lower(), field.name
        elif isinstance(actual, (int, float)):
            assert float(documented) == actual, f"{field.name}: {documented} != {actual}"
        elif isinstance(actual, tuple):
            assert documented == ",".join(actual), field.name
        else:
            assert documented == actual, f"{field.name}: {documented!r} != {actual!r}"


def _documented_assignments() -> List[Tuple[str, str]]:
    """Every ``OMNIDESK_X=value`` the docs show with a concrete value."""
    found = re.findall(r"(OMNIDESK_[A-Z_]+)=([^\s`'\"]+)", all_text())
    return [(name, value) for name, value in found if value != "..." and "$" not in value]


def test_every_value_the_docs_assign_to_a_setting_is_accepted() -> None:
    assignments = _documented_assignments()
    assert len(assignments) >= 8, assignments
    for name, value in assignments:
        if name in NOT_SETTINGS:
            continue
        OmnideskSettings.from_env({**VALID_ENV, name: value})


def test_every_yaml_block_in_the_docs_parses() -> None:
    yaml_blocks = blocks("yaml")
    assert len(yaml_blocks) >= 5
    for block in yaml_blocks:
        try:
            loaded = yaml.safe_load(block.text)
        except yaml.YAMLError as error:
            pytest.fail(f"{block.where()} is not YAML: {error}")
        assert isinstance(loaded, dict), block.where()
    fragment = yaml.safe_load(read(DOCS / "domain-fragment.yml"))
    assert "action_escalate_to_human" in fragment["actions"]


def test_every_make_target_the_docs_name_exists() -> None:
    targets = set(re.findall(r"^([\w-]+):", read(ROOT / "Makefile"), re.MULTILINE))
    code = re.findall(r"`([^`\n]+)`", all_text()) + [b.text for b in blocks("sh")]
    named = {target for span in code for target in re.findall(r"\bmake ([a-z][\w-]*)", span)}
    assert {"run", "test"} <= named
    assert named <= targets, f"the docs name make targets that do not exist: {named - targets}"


def test_the_secret_command_in_the_docs_makes_valid_distinct_secrets() -> None:
    commands = set(re.findall(r"python -c \"(import secrets[^\"]*)\"", all_text()))
    assert commands, "the docs show no command that makes a hookpoint secret"
    for code in commands:
        made = set()
        for _ in range(2):
            result = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
            )
            secret = result.stdout.strip()
            assert rules.HOOKPOINT_SECRET.check(secret) == secret
            OmnideskSettings.from_env({**VALID_ENV, "OMNIDESK_HOOKPOINT_SECRET": secret})
            made.add(secret)
        assert len(made) == 2, f"{code!r} made the same secret twice"


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_in_the_docs_resolves() -> None:
    checked = 0
    for path in doc_files():
        text = read(path)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            assert linked.exists(), f"{path.relative_to(ROOT)} links to missing {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", read(linked), re.MULTILINE)
                assert anchor in {_slug(h) for h in headings}, (
                    f"{path.relative_to(ROOT)} links to {target}: no such heading"
                )
            checked += 1
    assert checked >= 15


def test_the_readme_shows_what_make_run_prints() -> None:
    run_sh = read(ROOT / "scripts" / "run.sh")
    readme = read(ROOT / "README.md")
    defaults = dict(re.findall(r'^([A-Z_]+_PORT)="\$\{\1:-(\d+)\}"', run_sh, re.MULTILINE))
    assert (
        f"http://127.0.0.1:{defaults['PAGE_PORT']}/?server=http://127.0.0.1:{defaults['RASA_PORT']}"
        in readme
    )
    assert f"http://127.0.0.1:{defaults['SANDBOX_PORT']}/agent" in readme
    printed = [b for b in blocks("text") if "rasa-omnidesk is running" in b.text]
    assert printed, "README.md does not show what make run prints"
    for line in printed[0].text.splitlines():
        label = line.strip().split(":  ")[0].split("http")[0].strip()
        assert label and label.split(" (")[0] in run_sh, f"run.sh prints no {label!r}"
    assert "/webhooks/omnidesk/hook/***" in printed[0].text


def _import_from_a_bot(tmp_path: Path, init: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """Import the bot's own connectors.mine and connectors.omnidesk as ``rasa run`` would.

    The project directory comes before site-packages; site-packages holds
    connectors/omnidesk as a wheel lays it out (connectors without __init__.py).
    """
    site = tmp_path / "site-packages"
    (site / "connectors").mkdir(parents=True)
    (site / "connectors" / "omnidesk").symlink_to(ROOT / "connectors" / "omnidesk")
    bot = tmp_path / "bot"
    (bot / "connectors").mkdir(parents=True)
    (bot / "connectors" / "mine.py").write_text("NAME = 'mine'\n")
    if init is not None:
        (bot / "connectors" / "__init__.py").write_text(init)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": f"{bot}{os.pathsep}{site}"}
    return subprocess.run(
        [sys.executable, "-S", "-c", "import connectors.mine, connectors.omnidesk"],
        cwd=bot,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_the_installed_connector_sits_beside_a_bot_s_own_connectors_folder(tmp_path: Path) -> None:
    assert _import_from_a_bot(tmp_path, init=None).returncode == 0  # type: ignore[arg-type]


def test_a_bot_s_connectors_init_hides_it_unless_it_extends_its_path(tmp_path: Path) -> None:
    guide = read(DOCS / "troubleshooting.md")
    fix = re.search(r"^(__path__ = .+)$", guide, re.MULTILINE)
    assert fix, "docs/troubleshooting.md shows no __init__.py that merges the installed part"
    hidden = _import_from_a_bot(tmp_path / "empty", init="")
    assert hidden.returncode != 0
    assert "No module named 'connectors.omnidesk'" in hidden.stderr
    assert "No module named 'connectors.omnidesk'" in normalised(guide)
    fixed = _import_from_a_bot(tmp_path / "extended", init=fix.group(1) + "\n")
    assert fixed.returncode == 0, fixed.stderr


def test_every_sandbox_option_the_docs_list_exists() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "omnidesk_sandbox", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=ROOT,
    )
    listed = set(re.findall(r"^\| `(--[a-z-]+)`", read(DOCS / "sandbox.md"), re.MULTILINE))
    assert len(listed) >= 5
    missing = [option for option in listed if option not in result.stdout]
    assert not missing, f"docs/sandbox.md lists options the sandbox lacks: {missing}"
    commands = [b for b in blocks("sh") if "python -m omnidesk_sandbox" in b.text]
    assert commands
    for block in commands:
        for line in block.text.splitlines():
            if "python -m omnidesk_sandbox" not in line:
                continue
            words = shlex.split(line.split("#")[0])
            options = [w for w in words[words.index("omnidesk_sandbox") + 1 :] if w.startswith("-")]
            unknown = [option for option in options if option not in result.stdout]
            assert not unknown, f"{block.where()} uses sandbox options it lacks: {unknown}"
