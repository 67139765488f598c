"""The README's shell commands, as the README-command test (tests/test_readme.py) and the runner
(``python -m bench.run_readme_commands``) see them.

Every line of every ```bash block is one command (``\\`` continuations joined, ``#`` comments dropped). A command
either runs as written against the built-in synthetic data (after the README's own `make demo`) or is listed in
:data:`NOT_RUN` with the reason; the test fails when a command is in neither or a reason matches nothing.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: a substring of a command -> why the runner does not run it (the test still checks its subcommand and flags)
NOT_RUN = {
    "make demo": "creates .venv and trains 5 minutes: the runner runs `regpose demo --minutes M` in its place",
    "make test": "the test suite itself",
    "torchrun": "trains on COCO with GPUs",
    "CONFIG": "a placeholder for the user's config / weights",
    "photos/": "the user's photos and official checkpoints (downloads)",
}


@dataclass(frozen=True)
class Command:
    block: int          # index of the ```bash block in the README
    line: int           # README line number where the command starts
    text: str           # the command, continuations joined, comment dropped

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    def regpose_argv(self) -> list[str] | None:
        """The arguments after ``regpose`` (also in ``torchrun ... -m regpose ...``); None for other tools."""
        argv = self.argv
        if argv[0] == "regpose":
            return argv[1:]
        if argv[0] == "torchrun" and "-m" in argv and argv[argv.index("-m") + 1] == "regpose":
            return argv[argv.index("-m") + 2:]
        return None

    def not_run_reason(self) -> str | None:
        return next((why for key, why in NOT_RUN.items() if key in self.text), None)


def readme_commands(readme: Path = REPO / "README.md") -> list[Command]:
    commands, block, pending, start = [], -1, "", 0
    inside = False
    for number, raw in enumerate(readme.read_text().splitlines(), 1):
        if raw.startswith("```"):
            inside = raw.strip() == "```bash"
            block += inside
            continue
        if not inside:
            continue
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not pending:
            start = number
        pending += " " + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        if pending.strip():
            commands.append(Command(block, start, pending.strip()))
        pending = ""
    return commands
