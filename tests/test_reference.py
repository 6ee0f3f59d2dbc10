"""The settings reference: every key and setting of the package, with its type, default and meaning as the code
declares it, shown alike by cfg/default.yaml (the comment lines under each key), docs/reference.md and
``yolo-unified help``. ``python tests/test_reference.py`` rewrites the first two from the code."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from yolo_unified.cli import HELP, key_settings, keys_help, package_keys, run
from yolo_unified.continual import STRATEGIES
from yolo_unified.defaults import UNIFIED_KEYS
from yolo_unified.settings import SUB_KEY_PREFIX, Entry, read_keys, settings_entries, yaml_value

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = ROOT / "cfg" / "default.yaml"
REFERENCE = ROOT / "docs" / "reference.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")  # a markdown link's target
REWRITE = "python tests/test_reference.py rewrites it from the code"
PAGE_HEAD = """# Settings reference

Every key of yolo-unified, with its type, default and meaning, and the settings under it: a strategy's
(`replay: {size: 20, batch: 4}`, the others at their defaults; `replay: True` for all the defaults) and the
balancing method's (`balance_args`). Ultralytics' own keys (`epochs`, `imgsz`, `batch`, `lr0`, ...) keep their
meaning: [Ultralytics' configuration reference](https://docs.ultralytics.com/usage/cfg/). The keys work on the command
line (`key=value`, a mapping as `replay="{size: 20}"`), in `cfg=` files and, in a protocol, per stage.

This page is generated from the code: the modes and their own keys (`seg_argmax` of export, `runs` of benchmark, ...)
from the usage text of `yolo-unified help` ([yolo_unified/cli.py](../yolo_unified/cli.py)), the train keys from
[cfg/default.yaml](../cfg/default.yaml), where each is declared, the settings from the strategies' `Settings`
dataclasses (`yolo_unified/continual/`) and the balancing methods' keyword arguments (`yolo_unified/balancing/`).
`yolo-unified help` prints the same (`yolo-unified help replay`: one key); `tests/test_reference.py` fails when this
page, the help or cfg/default.yaml differ from the code, and `python tests/test_reference.py` rewrites this page and
cfg/default.yaml's setting lines. An unknown key or setting fails naming the closest one; a value of another type fails
naming the setting and the type it takes.
"""


def cell(text: str) -> str:
    """`text` in a markdown table cell (its pipes escaped)."""
    return text.replace("|", "\\|")


def row(key: str, entry: Entry, case: str = "") -> str:
    """One markdown table row: the key (and the case it applies in), type, default and meaning of `entry`."""
    where = f" ({case})" if case else ""
    return f"| `{key}`{where} | {cell(entry.type)} | `{cell(yaml_value(entry.default))}` | {cell(entry.meaning)} |"


def reference_page() -> str:
    """docs/reference.md as the code declares the keys: the modes and their own keys (the first part of ``yolo-unified
    help``), then one table per section of cfg/default.yaml, each key followed by its settings (``replay.size``;
    ``balance_args.temp`` with the ``balance=`` method it belongs to)."""
    settings, lines = key_settings(), [PAGE_HEAD, "## Modes and their own keys", "", "```text", HELP.strip(), "```", ""]
    for title, entries in package_keys().items():
        lines += [f"## {title or 'Keys'}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for entry in entries:
            lines.append(row(entry.key, entry))
            for case, case_entries in settings.get(entry.key, {}).items():
                if case and not case_entries:
                    lines.append(f"| `{entry.key}` ({case}) | | | no settings |")
                lines += [row(f"{entry.key}.{sub.key}", sub, case) for sub in case_entries]
        lines.append("")
    return "\n".join(lines)


def default_yaml(text: str) -> str:
    """cfg/default.yaml's `text` with the lines under each key that show its settings as the code declares them
    (``#   size: 10 # (an integer or a number) ...``; a balancing method's under ``#   with balance=...:``)."""
    settings, lines = key_settings(), []
    for line in text.splitlines():
        if line.startswith(SUB_KEY_PREFIX):
            continue
        lines.append(line)
        key = "" if line.startswith("#") else line.split(":", 1)[0]
        for case, entries in settings.get(key, {}).items():
            indent = SUB_KEY_PREFIX + ("  " if case else "")
            if case:
                lines.append(f"{SUB_KEY_PREFIX}with {case}:{'' if entries else ' no settings'}")
            lines += [f"{indent}{e.key}: {yaml_value(e.default)} # ({e.type}) {e.meaning}" for e in entries]
    return "\n".join(lines) + "\n"


def every_entry() -> list[tuple[str, Entry]]:
    """Every key and every setting under one, each with the top-level key it belongs to."""
    settings = key_settings()
    keys = [(e.key, e) for entries in package_keys().values() for e in entries]
    return keys + [(key, e) for key, cases in settings.items() for entries in cases.values() for e in entries]


def test_default_yaml_shows_every_setting_as_the_code_declares_it():
    """cfg/default.yaml's lines under each key are the settings the code declares (replay's size 10 and batch 2)."""
    text = DEFAULT_YAML.read_text()
    assert text == default_yaml(text), f"cfg/default.yaml's setting lines differ from the code; {REWRITE}"
    assert "#   size: 10 # (an integer or a number)" in text and "#   batch: 2 # (an integer)" in text


def test_reference_page_is_the_code():
    """docs/reference.md is the page the code gives (old_labels' conf 0.5 among its rows)."""
    page = REFERENCE.read_text()
    assert page == reference_page(), f"docs/reference.md differs from the code; {REWRITE}"
    assert "| `old_labels.conf` | a number | `0.5` |" in page


def test_help_lists_every_key_and_setting(capsys):
    """``yolo-unified help`` prints every key and setting with its default, type and meaning."""
    run(["help"])
    out = " ".join(capsys.readouterr().out.split())  # the help wraps long lines
    for key, entry in every_entry():
        shown = f"{entry.key}{'=' if key == entry.key else ': '}{yaml_value(entry.default)} ({entry.type}) "
        assert shown + " ".join(entry.meaning.split()) in out, f"{key}: {entry.key} missing from the help"
    assert "max_norm: 10.0 (a number)" in out and "balance=pcgrad, rlw, imtlg: no settings" in out


def test_help_of_some_keys():
    """``yolo-unified help KEY ...`` prints those keys only; an unknown one fails naming the closest."""
    text = keys_help(["old_labels"])
    assert "conf: 0.5" in text and "replay=" not in text and "Joint training" not in text
    with pytest.raises(SyntaxError, match="did you mean 'replay'"):
        keys_help(["replya"])


def test_every_key_and_setting_has_a_meaning_and_every_strategy_a_key():
    """No key or setting goes undocumented, and every built-in strategy is declared in cfg/default.yaml."""
    assert not [f"{key}: {e.key}" for key, e in every_entry() if not e.meaning.strip()]
    declared = {e.key for entries in package_keys().values() for e in entries}
    built_in = {key for key, cls in STRATEGIES.items() if cls.__module__.startswith("yolo_unified.")}
    assert built_in <= declared, f"strategies without a key in cfg/default.yaml: {sorted(built_in - declared)}"


def test_help_shows_a_strategy_registered_from_outside():
    """A strategy registered from outside the package is listed with its settings, its docstring's first line the
    meaning of its key."""
    ToyPull = importlib.import_module("plugins.toy_strategy").ToyPull  # registers it, as a user's import would
    try:
        text = " ".join(keys_help([]).split())
        assert f"toy_pull=null (dict, optional) {ToyPull.__doc__.strip().splitlines()[0]}" in text
        assert all(f"{e.key}: {yaml_value(e.default)} ({e.type})" in text for e in settings_entries(ToyPull.Settings))
    finally:
        STRATEGIES.pop(ToyPull.key), UNIFIED_KEYS.pop(ToyPull.key), sys.modules.pop("plugins.toy_strategy")


def test_read_keys_refuses_an_undeclared_line():
    """A cfg/default.yaml key line without ``# (type) meaning`` fails naming it; sections and setting lines are
    read as such."""
    keys = read_keys("# Model ---\nbn_freeze: False # (bool) hold the statistics\n#   weight: 1.0 # (a number) w\n")
    assert keys == {"Model": [Entry("bn_freeze", "bool", False, "hold the statistics")]}
    with pytest.raises(ValueError, match="'ewc: True' is not"):
        read_keys("ewc: True\n")


def anchors(page: Path) -> set[str]:
    """The anchors of a markdown page's headings, as GitHub makes them (lower case, punctuation dropped, spaces to
    hyphens)."""
    titles = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-") for title in titles}


@pytest.mark.parametrize("page", ["docs/reference.md", "docs/recipes.md", "docs/export.md", "README.md"])
def test_links_of_the_reference_pages_resolve(page):
    """Every relative link of the reference pages names a file of the repository, and its anchor a heading there."""
    broken = []
    for target in LINK.findall((ROOT / page).read_text()):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        if not file.exists() or (anchor and anchor not in anchors(file)):
            broken.append(target)
    assert not broken, f"{page}: links to nothing: {broken}"


if __name__ == "__main__":
    DEFAULT_YAML.write_text(default_yaml(DEFAULT_YAML.read_text()))
    REFERENCE.write_text(reference_page())
