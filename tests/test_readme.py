"""The README stays true: its recipe parses and every command it shows exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from flows.cli import build_parser
from flows.recipe import parse_recipe

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_the_recipe_in_the_readme_is_valid():
    blocks = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    assert blocks, "the README shows a recipe"
    for block in blocks:
        parse_recipe(yaml.safe_load(block))


def test_every_foil_command_in_the_readme_exists():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    fenced = re.findall(r"```\w*\n(.*?)```", README, flags=re.S)
    prose = re.sub(r"```\w*\n.*?```", "", README, flags=re.S)  # inline code is paired outside fences only
    code = "\n".join(fenced + re.findall(r"`([^`\n]+)`", prose))
    used = set(re.findall(r"(?:^|\s|/)foil (\w[\w-]*)", code, flags=re.M))
    assert {"sql", "crawl", "train", "submit", "eval"} <= used
    assert used <= commands, used - commands
