"""``aami-agent``: run the agent, show its id and status, run its checks once.

Heavy modules are imported inside the commands that need them: ``version`` loads
nothing, ``id`` and ``status`` never load the HTTP client, and only ``run`` and
``check`` pay for everything (the agent's resident memory budget is tight).
Configuration problems end with the message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent import defaults

if TYPE_CHECKING:
    from agent.config import Config

EXIT_CONFIG = 2
# LSB init-script convention for "program is not running".
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN = 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from agent.errors import ConfigError

    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"aami-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aami-agent",
        description="AAMI node agent: runs the checks the config-server assigns to this "
                    "host and reports their results.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text)

    def config_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-c", "--config", default=defaults.CONFIG_PATH, metavar="FILE",
                         help=f"agent configuration file (default: {defaults.CONFIG_PATH})")

    run = add("run", "Run the agent in the foreground until SIGTERM or SIGINT "
                     "(SIGHUP re-reads the configuration).")
    config_option(run)
    run.set_defaults(func=cmd_run)

    ident = add("id", "Print this agent's id, creating it if there is none yet.")
    config_option(ident)
    ident.set_defaults(func=cmd_id)

    check = add("check", "Run the assigned checks once and print their results; the exit "
                         "code is the worst status (0 ok, 1 warning, 2 critical, 3 unknown).")
    check.add_argument("--once", action="store_true", required=True,
                       help="run every assigned check once (required)")
    config_option(check)
    check.set_defaults(func=cmd_check)

    status = add("status", "Show what the running agent reports about itself "
                           "(exit 0 if it runs, 3 if not).")
    config_option(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)

    validate = add("validate", "Check a configuration file without starting the agent "
                               "(exit 0 when valid, 2 with the problem otherwise).")
    config_option(validate)
    validate.add_argument("--skip-files", action="store_true",
                          help="do not require the files it names (certificates, token "
                               "file) to exist yet, e.g. while a deployment writes them")
    validate.set_defaults(func=cmd_validate)

    version = add("version", "Print the agent's version.")
    version.set_defaults(func=cmd_version)
    return parser


def _load(args: argparse.Namespace, *, check_files: bool = True) -> Config:
    from agent.config import load_config

    return load_config(args.config, check_files=check_files)


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from agent.logs import setup_logging
    from agent.runner import Agent

    config = _load(args)
    setup_logging(config.logging.level, config.logging.format)
    agent = Agent(config)

    # The handlers only set events; the main thread inside Agent.run() does the work.
    def stop(signum: int, frame: object) -> None:
        agent.request_stop()

    def reload(signum: int, frame: object) -> None:
        agent.request_reload()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    return agent.run()


def cmd_validate(args: argparse.Namespace) -> int:
    _load(args, check_files=not args.skip_files)
    print(f"{args.config}: valid")
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    from agent.identity import load_or_create_agent_id

    config = _load(args, check_files=False)
    print(load_or_create_agent_id(config.agent.id_file))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from agent.errors import AgentError, ConfigError
    from agent.logs import setup_logging
    from agent.model import STATUS_SEVERITY
    from agent.runner import check_once
    from agent.status import format_table

    config = _load(args)
    setup_logging("warning", "text")
    try:
        report = check_once(config)
    except ConfigError:
        raise
    except AgentError as exc:
        print(f"aami-agent: UNKNOWN: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    print(f"assignment: {report.source}")
    for problem in report.problems:
        print(f"skipped invalid check: {problem}")
    if not report.results:
        print("no checks assigned")
        return 0
    rows = []
    for result in sorted(report.results, key=lambda r: r.check_id):
        lines = result.output.strip().splitlines()
        rows.append([result.check_id, result.status.upper(), f"{result.duration_ms}ms",
                     lines[0] if lines else ""])
    print(format_table(["CHECK", "STATUS", "DURATION", "OUTPUT"], rows))
    return max(STATUS_SEVERITY.get(r.status, EXIT_UNKNOWN) for r in report.results)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from agent.status import pid_running, read_status, render

    config = _load(args, check_files=False)
    path = config.agent.state_dir / defaults.STATUS_FILE
    try:
        status = read_status(path)
    except (OSError, ValueError) as exc:
        print(f"aami-agent: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if status is None:
        print(f"aami-agent: no status file at {path}: the agent has not run with this "
              "configuration (or its state_dir differs)", file=sys.stderr)
        return EXIT_NOT_RUNNING
    # A cleanly stopped agent says so; a crashed one leaves a pid that no longer runs.
    running = status.get("state") != "stopped" and pid_running(status.get("pid"))
    if args.json:
        print(json.dumps({**status, "running": running}, indent=2, sort_keys=True))
    else:
        print(render(status, running=running))
    return 0 if running else EXIT_NOT_RUNNING


def cmd_version(args: argparse.Namespace) -> int:
    from agent.version import agent_version

    print(f"aami-agent {agent_version()}")
    return 0
