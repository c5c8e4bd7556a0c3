"""The facts of a Dockerfile the Docker-free build must reproduce.

Only the instructions our Dockerfiles use are understood; anything else is kept as an
`unknown` entry so the drift test can say the builder does not replicate it.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# `if [ "$ARG" = "value" ]; then ...; fi`: the one conditional shape our Dockerfiles use.
_CONDITIONAL = re.compile(r'if \[ "\$(\w+)" = "([^"]*)" \]; then (.*?);? fi')


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    destination: str


@dataclass
class DockerfileFacts:
    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = "/"
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    exposed: list[str] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def pip_requirement_files(self) -> list[str]:
        """The `-r FILE` arguments of every `pip install` the RUN lines execute, in order,
        without duplicates."""
        found: list[str] = []
        for command in self.runs:
            for part in command.split("&&"):
                words = shlex.split(part)
                if words[:2] != ["pip", "install"]:
                    continue
                for flag, value in itertools.pairwise(words):
                    if flag == "-r" and value not in found:
                        found.append(value)
        return found


def logical_lines(text: str) -> list[str]:
    """Instructions with their `\\` continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].strip() + " "
            continue
        current += stripped
        lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def _env_pairs(rest: str) -> list[tuple[str, str]]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]  # legacy `ENV KEY value`
    pairs = []
    for word in words:
        key, _, value = word.partition("=")
        pairs.append((key, value))
    return pairs


def _exec_form(rest: str, instruction: str) -> list[str]:
    try:
        parsed = json.loads(rest)
    except json.JSONDecodeError as error:
        raise ValueError(f"{instruction} must be in JSON (exec) form, got {rest!r}") from error
    if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
        raise ValueError(f"{instruction} must be a JSON list of strings, got {rest!r}")
    return parsed


def _evaluate_run(command: str, args: dict[str, str]) -> str | None:
    """The command a RUN executes with these build args (None: nothing runs)."""
    match = _CONDITIONAL.fullmatch(command)
    if match is None:
        return _substitute(command, args)
    name, expected, body = match.groups()
    return _substitute(body, args) if args.get(name) == expected else None


def parse(text: str, build_args: dict[str, str] | None = None) -> DockerfileFacts:
    facts = DockerfileFacts()
    args: dict[str, str] = {}
    overrides = build_args or {}
    for line in logical_lines(text):
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            facts.base = rest
        elif instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name] = overrides.get(name, default)
        elif instruction == "ENV":
            for key, value in _env_pairs(rest):
                facts.env[key] = _substitute(value, {**args, **facts.env})
        elif instruction == "COPY":
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            facts.copies.append(Copy(tuple(words[:-1]), words[-1]))
        elif instruction == "RUN":
            command = _evaluate_run(rest, args)
            if command is not None:
                facts.runs.append(command)
        elif instruction == "USER":
            facts.user = rest
        elif instruction == "WORKDIR":
            facts.workdir = rest
        elif instruction == "ENTRYPOINT":
            facts.entrypoint = _exec_form(rest, instruction)
        elif instruction == "CMD":
            facts.cmd = _exec_form(rest, instruction)
        elif instruction == "EXPOSE":
            facts.exposed.extend(rest.split())
        else:
            facts.unknown.append(line)
    return facts


def read(path: Path, build_args: dict[str, str] | None = None) -> DockerfileFacts:
    return parse(path.read_text(), build_args)
