"""Replay a Dockerfile's build on this machine, without a Docker engine.

Enough of the Dockerfile reference to build our own image the way ``docker build`` would:
FROM (a ``python:3.X`` image, stood in for by a fresh venv of the same Python), ARG, ENV,
WORKDIR, COPY (build context filtered by ``.dockerignore``, or ``--from`` an earlier
stage), RUN (``/bin/sh -c``), USER, EXPOSE, LABEL, HEALTHCHECK, ENTRYPOINT and CMD.
Anything else fails loudly, so the replay cannot silently drift from the file.

Every stage gets a directory standing in for its root filesystem. Paths in the image
(``/opt/aami``) map into it; ``/usr/local`` maps to the stand-in Python; ``/usr/bin`` and
the like stay this machine's. ENV values that are paths are mapped the same way before a
RUN sees them, which is why RUN lines must name their paths through ENV or ARG rather than
spell them out. RUN lines that manage user accounts cannot run here (they would change
this machine's users): they are recorded in ``skipped`` for the test to inspect.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# What the official python images set before our first instruction.
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
# Paths of the image that are this machine's own (shell, coreutils).
HOST_PATHS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/dev")
# Variables of this machine a build may use: pip's registry settings, proxies, CA bundles.
PASSTHROUGH = re.compile(
    r"^(HOME|PIP_[A-Z_]+|(?i:https?_proxy|no_proxy)|SSL_CERT_(FILE|DIR)|REQUESTS_CA_BUNDLE)$"
)
ACCOUNT_COMMANDS = re.compile(r"\b(useradd|groupadd|adduser|addgroup|usermod)\b")
ALLOWED_LITERAL_PATHS = {"/dev/null"}
RUN_TIMEOUT = 600.0


class ReplayError(Exception):
    """The Dockerfile uses something the replay does not do, or one of its steps failed."""


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int

    def split_flags(self) -> tuple[dict[str, str], str]:
        """Leading ``--name=value`` flags, and the rest of the instruction."""
        flags: dict[str, str] = {}
        rest = self.value
        while match := re.match(r"--([a-z-]+)=(\S+)\s+", rest):
            flags[match.group(1)] = match.group(2)
            rest = rest[match.end():]
        return flags, rest

    def command(self) -> list[str]:
        """ENTRYPOINT/CMD/RUN arguments: the exec form's list, or the shell form via sh -c."""
        text = self.value.strip()
        if text.startswith("["):
            try:
                argv = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ReplayError(f"line {self.line}: bad exec form {text!r}: {exc}") from None
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise ReplayError(f"line {self.line}: exec form must be a list of strings")
            return argv
        return ["/bin/sh", "-c", text]


def parse(text: str) -> list[Instruction]:
    """Instructions with their first line number; continuations joined, comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and (not line or line.startswith("#")):
            continue  # comments and blank lines inside a continuation are dropped
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, value = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        pending = []
    if pending:
        raise ReplayError(f"line {start}: continuation runs off the end of the file")
    return instructions


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Docker's ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` in ENV, ARG, COPY, ..."""

    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if name in variables and variables[name] != "":
            return variables[name]
        return match.group("default") or ""

    pattern = r"\$(?:\{(?P<braced>\w+)(?::-(?P<default>[^}]*))?\}|(?P<bare>\w+))"
    return re.sub(pattern, value, text)


def key_values(text: str, variables: Mapping[str, str]) -> dict[str, str]:
    """``NAME=value NAME2="v 2"`` (or the old ``NAME value``), each substituted."""
    words = shlex.split(text)
    if words and "=" not in words[0]:
        return {words[0]: substitute(" ".join(words[1:]), variables)}
    pairs = {}
    for word in words:
        name, sep, raw = word.partition("=")
        if not sep:
            raise ReplayError(f"expected NAME=value, got {word!r}")
        pairs[name] = substitute(raw, variables)
    return pairs


def literal_paths(command: str) -> set[str]:
    """Absolute paths spelled out in a shell command (``$VAR/x`` is not one)."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    fragments = (f for w in words for f in re.split(r"[\s=:(),;|&<>]+", w))
    return {f for f in fragments if f.startswith("/")}


class DockerIgnore:
    """``.dockerignore`` patterns: ``*``, ``?``, ``**``, ``!`` exceptions; last match wins.

    A pattern that matches a directory excludes everything below it.
    """

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((keep, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i:end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return out + "$"

    def ignored(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for keep, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                excluded = not keep
        return excluded


@dataclass
class Stage:
    """One ``FROM`` of the file, built into ``root``."""

    name: str
    base: str
    root: Path
    python_prefix: Path
    env: dict[str, str] = field(default_factory=lambda: dict(BASE_IMAGE_ENV))
    args: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    exposed: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] | None = None
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def host(self, image_path: str) -> Path:
        """Where a path of this stage's filesystem lives on this machine."""
        path = posixpath.normpath(posixpath.join(self.workdir, image_path))
        if path == "/usr/local" or path.startswith("/usr/local/"):
            return self.python_prefix / posixpath.relpath(path, "/usr/local")
        if any(path == p or path.startswith(p + "/") for p in HOST_PATHS):
            return Path(path)
        return self.root / path.lstrip("/")

    def host_value(self, value: str) -> str:
        """An ENV value as this machine needs it: image paths (and PATH lists) mapped."""
        if not value.startswith("/"):
            return value
        return os.pathsep.join(
            str(self.host(part)) if part.startswith("/") else part for part in value.split(":")
        )

    def host_env(self, drop: Iterable[str] = ()) -> dict[str, str]:
        """The environment a process of this stage sees, mapped onto this machine.

        Temporary files go to the stage's own /tmp, as they would in the container.
        """
        env = {k: v for k, v in os.environ.items() if PASSTHROUGH.match(k)}
        env.update({k: self.host_value(v) for k, v in {**self.args, **self.env}.items()})
        self.host("/tmp").mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(self.host("/tmp"))
        for name in drop:
            env.pop(name, None)
        return env

    def variables(self) -> dict[str, str]:
        return {**self.args, **self.env}

    def resolve(self, argv: list[str], env: Mapping[str, str]) -> list[str]:
        """``argv`` with its program looked up on the stage's PATH, as the runtime does."""
        found = shutil.which(argv[0], path=env.get("PATH", ""))
        if found is None:
            raise ReplayError(f"{argv[0]!r} is not on the image's PATH {env.get('PATH')}")
        return [found, *argv[1:]]


class Replay:
    """Build every stage of ``dockerfile`` under ``workspace`` from ``context``.

    ``python_prefix`` is a venv of the Python the ``FROM python:3.X`` images carry.
    ``drop_env`` names ENV settings not to apply here (e.g. ``PIP_NO_CACHE_DIR``: the
    image wants no pip cache layer, a test machine wants its cache). With ``execute``
    false, COPY and RUN are only checked and recorded: the image's metadata, at once.
    """

    def __init__(
        self,
        dockerfile: Path,
        context: Path,
        workspace: Path,
        python_prefix: Path,
        drop_env: Iterable[str] = (),
        execute: bool = True,
    ) -> None:
        self.instructions = parse(dockerfile.read_text())
        self.context = context
        ignore_file = context / ".dockerignore"
        self.ignore = DockerIgnore(ignore_file.read_text() if ignore_file.exists() else "")
        self.workspace = workspace
        self.python_prefix = python_prefix
        self.drop_env = tuple(drop_env)
        self.execute = execute
        self.stages: dict[str, Stage] = {}
        self.log: list[str] = []

    @property
    def final(self) -> Stage:
        return list(self.stages.values())[-1]

    def build(self) -> Stage:
        global_args: dict[str, str] = {}
        stage: Stage | None = None
        for step in self.instructions:
            if step.keyword == "FROM":
                stage = self._start_stage(step, global_args)
            elif stage is None:
                if step.keyword != "ARG":
                    raise ReplayError(f"line {step.line}: {step.keyword} before FROM")
                global_args.update(self._arg(step, global_args))
            else:
                self._apply(stage, step, global_args)
        if stage is None:
            raise ReplayError("no FROM in the Dockerfile")
        return self.final

    def _start_stage(self, step: Instruction, global_args: Mapping[str, str]) -> Stage:
        words = substitute(step.value, global_args).split()
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
            raise ReplayError(f"line {step.line}: expected FROM IMAGE [AS NAME]")
        base = words[0]
        if base in self.stages or not base.startswith("python:"):
            raise ReplayError(f"line {step.line}: only python:* base images are replayed")
        name = words[2] if len(words) == 3 else str(len(self.stages))
        root = self.workspace / name
        root.mkdir(parents=True)
        self.stages[name] = Stage(name, base, root, self.python_prefix)
        return self.stages[name]

    @staticmethod
    def _arg(step: Instruction, known: Mapping[str, str]) -> dict[str, str]:
        name, _, default = step.value.partition("=")
        return {name.strip(): known.get(name.strip()) or substitute(default.strip(), known)}

    def _apply(self, stage: Stage, step: Instruction, global_args: Mapping[str, str]) -> None:
        keyword = step.keyword
        if keyword == "ARG":
            stage.args.update(self._arg(step, {**global_args, **stage.variables()}))
        elif keyword == "ENV":
            stage.env.update(key_values(step.value, stage.variables()))
        elif keyword == "LABEL":
            stage.labels.update(key_values(step.value, stage.variables()))
        elif keyword == "WORKDIR":
            stage.workdir = posixpath.join(stage.workdir, substitute(step.value, stage.variables()))
            stage.host(stage.workdir).mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            self._copy(stage, step)
        elif keyword == "RUN":
            self._run(stage, step)
        elif keyword == "USER":
            stage.user = substitute(step.value, stage.variables())
        elif keyword == "EXPOSE":
            stage.exposed += [p.split("/")[0] for p in step.value.split()]
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = step.command()
            stage.cmd = []  # as docker does: a new ENTRYPOINT resets CMD
        elif keyword == "CMD":
            stage.cmd = step.command()
        elif keyword == "HEALTHCHECK":
            flags, rest = step.split_flags()
            if rest.strip().upper() == "NONE":
                stage.healthcheck = None
            elif rest.startswith("CMD "):
                stage.healthcheck_options = flags
                stage.healthcheck = Instruction("CMD", rest[4:], step.line).command()
            else:
                raise ReplayError(f"line {step.line}: HEALTHCHECK needs CMD or NONE")
        else:
            raise ReplayError(f"line {step.line}: the replay does not do {keyword}")

    def _copy(self, stage: Stage, step: Instruction) -> None:
        flags, rest = step.split_flags()
        unknown = set(flags) - {"from", "chown", "chmod", "link"}
        if unknown:
            raise ReplayError(f"line {step.line}: COPY --{unknown.pop()} is not replayed")
        words = [substitute(w, stage.variables()) for w in shlex.split(rest)]
        if len(words) < 2:
            raise ReplayError(f"line {step.line}: COPY needs a source and a destination")
        *sources, dest = words
        self.log.append(f"COPY {rest}")
        if not self.execute:
            return
        into_dir = dest.endswith("/") or len(sources) > 1
        target = stage.host(dest)
        for source in sources:
            if "from" in flags:
                found = [self.stages[flags["from"]].host(source)]
                context = None
            else:
                found = sorted(self.context.glob(source.lstrip("/"))) if any(
                    c in source for c in "*?[") else [self.context / source]
                context = self.context
            for path in found:
                if not path.exists():
                    raise ReplayError(f"line {step.line}: COPY source {source} does not exist")
                if context is not None and self.ignore.ignored(
                    path.relative_to(context).as_posix()
                ):
                    raise ReplayError(
                        f"line {step.line}: COPY source {source} is excluded by .dockerignore"
                    )
                if path.is_dir():
                    self._copy_tree(path, target, context)
                else:
                    into = target / path.name if into_dir else target
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, into)

    def _copy_tree(self, source: Path, target: Path, context: Path | None) -> None:
        """The contents of ``source`` into ``target``; context files filtered by .dockerignore."""
        for path in sorted(source.rglob("*")):
            if path.is_dir():
                continue
            if context is not None and self.ignore.ignored(path.relative_to(context).as_posix()):
                continue
            into = target / path.relative_to(source)
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, into)

    def _run(self, stage: Stage, step: Instruction) -> None:
        command = step.value
        if ACCOUNT_COMMANDS.search(command):
            stage.skipped.append(command)
            self.log.append(f"RUN (skipped: changes user accounts) {command}")
            return
        spelled = literal_paths(command) - ALLOWED_LITERAL_PATHS
        if spelled:
            raise ReplayError(
                f"line {step.line}: RUN spells out {sorted(spelled)}; name paths with ENV or ARG "
                "so that the replay can map them"
            )
        if not self.execute:
            self.log.append(f"RUN (not executed) {command}")
            return
        env = stage.host_env(self.drop_env)
        argv = stage.resolve(step.command(), env)
        done = subprocess.run(
            argv, cwd=stage.host(stage.workdir), env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
        )
        self.log.append(f"RUN {command}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            raise ReplayError(
                f"line {step.line}: RUN {command} exited {done.returncode}\n"
                f"--- stdout\n{done.stdout[-4000:]}--- stderr\n{done.stderr[-4000:]}"
            )
