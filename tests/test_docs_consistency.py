"""The documentation and the `squeeze` command agree: every option named in a `squeeze ...` command of the READMEs
and RESULTS.md exists in that subcommand's parser, and every option's --help states its default."""

import argparse
import re
from pathlib import Path

import pytest

cli = pytest.importorskip("export.cli")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "android_demo/README.md", "ios_demo/README.md", "squeezed_attention/RESULTS.md")


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _options(parser) -> set:
    return {o for a in parser._actions for o in a.option_strings}


def _all_parsers(parser, name="squeeze"):
    yield name, parser
    for sub, p in _subparsers(parser).items():
        yield from _all_parsers(p, f"{name} {sub}")


def _doc_commands(text: str):
    """`squeeze ...` commands: in backticks (across line breaks) and on code lines (with their continuations)."""
    text = re.sub(r"\\\n\s*", " ", text)
    yield from re.findall(r"`(squeeze [^`]+)`", text.replace("\n", " "))
    yield from re.findall(r"^\s*(?:\$ )?(squeeze [^\n#]+)", text, re.M)


@pytest.mark.parametrize("doc", DOCS)
def test_options_in_documented_commands_exist(doc):
    root = cli.build_parser()
    unknown = set()
    for command in _doc_commands((ROOT / doc).read_text(encoding="utf-8")):
        words = command.split()
        parser = _subparsers(root).get(words[1]) if len(words) > 1 else None
        if parser is None:
            continue
        if len(words) > 2 and words[2] in _subparsers(parser):
            parser = _subparsers(parser)[words[2]]
        known = _options(parser) | _options(root)
        unknown |= {(flag, command[:80]) for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command)
                    if flag not in known}
    assert not unknown, sorted(unknown)


def test_every_option_help_states_its_default():
    missing = [(name, a.option_strings) for name, parser in _all_parsers(cli.build_parser()) for a in parser._actions
               if a.option_strings and a.help not in (None, argparse.SUPPRESS) and a.dest != "help"
               and "default" not in a.help and "required" not in a.help]
    assert not missing, missing
