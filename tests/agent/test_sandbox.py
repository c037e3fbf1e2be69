"""agent/sandbox.py and the executor's sandbox as a whole: allowed paths, no shell unless
allowed, resource limits, an unprivileged user, no_new_privs, a scrubbed environment.

The user tests need root (they switch to ``nobody``); the suite runs as root in CI."""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.assignment import InvalidCheck, parse_check
from agent.config import load_config
from agent.errors import ConfigError
from agent.executor import SHELL_DISABLED, Executor
from agent.limits import DEFAULT_LIMITS
from agent.model import CheckResult, CheckSpec, ResourceLimits
from agent.sandbox import DEFAULT_CHECK_USER, CheckUser, check_user, resolve_user

pytestmark = pytest.mark.timeout(30)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody") if "nobody" in {p.pw_name for p in pwd.getpwall()} else None
needs_nobody = pytest.mark.skipif(NOBODY is None, reason="no user nobody here")

MakePlugin = Callable[..., str]


@pytest.fixture
def make_plugin(plugin_dir: Path) -> MakePlugin:
    def make(name: str, body: str, interpreter: str = "/bin/sh") -> str:
        path = plugin_dir / name
        path.write_text(f"#!{interpreter}\n{body}")
        path.chmod(0o755)
        return str(path)

    return make


def executor(plugin_dir: Path, **options: object) -> Executor:
    return Executor([str(plugin_dir)], DEFAULT_LIMITS, **options)  # type: ignore[arg-type]


def spec(*command: str, **kwargs: object) -> CheckSpec:
    return CheckSpec(id="c", name="c", command=tuple(command), interval=60.0,
                     timeout=kwargs.pop("timeout", 5.0), **kwargs)  # type: ignore[arg-type]


def nobody() -> CheckUser:
    assert NOBODY is not None
    return CheckUser(name="nobody", uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)


def assert_refused(result: CheckResult, reason: str) -> None:
    assert (result.status, result.exit_code) == ("unknown", 3)
    assert result.output == f"UNKNOWN: {reason}" or reason in result.output


# -- (a) allowed paths ----------------------------------------------------------------------


def test_a_symlinked_directory_inside_the_allowed_path_does_not_escape(
    plugin_dir: Path
) -> None:
    (plugin_dir / "bin").symlink_to("/usr/bin")
    result = executor(plugin_dir).run(spec(str(plugin_dir / "bin" / "id")))
    assert_refused(result, "resolves to /usr/bin/id")


def test_a_sibling_directory_sharing_the_prefix_is_not_allowed(plugin_dir: Path) -> None:
    sibling = Path(str(plugin_dir) + "-evil")
    sibling.mkdir()
    try:
        evil = sibling / "check"
        evil.write_text("#!/bin/sh\necho pwned\n")
        evil.chmod(0o755)
        assert_refused(executor(plugin_dir).run(spec(str(evil))), "outside the allowed paths")
    finally:
        shutil.rmtree(sibling)


def test_dot_dot_back_into_an_allowed_directory_is_fine_and_out_of_it_is_not(
    plugin_dir: Path, make_plugin: MakePlugin
) -> None:
    make_plugin("ok", "echo fine")
    inside = f"{plugin_dir}/../{plugin_dir.name}/ok"
    assert executor(plugin_dir).run(spec(inside)).output == "fine"
    assert_refused(executor(plugin_dir).run(spec(f"{plugin_dir}/../../usr/bin/id")),
                   "outside the allowed paths")


def test_relative_program_paths_are_refused(plugin_dir: Path, make_plugin: MakePlugin) -> None:
    make_plugin("ok", "echo fine")
    assert_refused(executor(plugin_dir).run(spec(f"./{plugin_dir.name}/ok")), "relative")
    assert_refused(executor(plugin_dir).run(spec("../ok")), "relative")


# -- (b) no shell unless asked for and allowed ---------------------------------------------


def test_a_shell_check_is_refused_unless_the_agent_allows_shell_checks(
    plugin_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    result = executor(plugin_dir).run(spec(f"touch {marker}", shell=True))
    assert result.output == f"UNKNOWN: {SHELL_DISABLED}"
    assert result.output == ("UNKNOWN: shell checks are disabled on this agent "
                             "(checks.allow_shell)")
    assert result.status == "unknown" and not marker.exists()


def test_an_allowed_shell_check_runs_its_line_with_sh_outside_the_allowed_paths(
    plugin_dir: Path
) -> None:
    result = executor(plugin_dir, allow_shell=True).run(
        spec('n=$((40 + 2)); echo "OK - answer $n | answer=$n"; exit 1', shell=True))
    assert (result.status, result.output) == ("warning", "OK - answer 42")
    assert result.perfdata[0]["value"] == 42.0


def test_without_shell_a_command_line_is_just_a_missing_program(plugin_dir: Path) -> None:
    result = executor(plugin_dir, allow_shell=True).run(spec("echo hi; id"))
    assert_refused(result, "not found")  # argv[0] "echo hi; id" in the allowed dir


def test_a_shell_check_must_be_one_command_line() -> None:
    entry = {"id": "sh", "command": ["echo", "hi"], "interval": "1m", "shell": True}
    with pytest.raises(InvalidCheck, match="must be one string"):
        parse_check(entry, 30.0)
    with pytest.raises(InvalidCheck, match="shell must be true or false"):
        parse_check({**entry, "command": ["echo hi"], "shell": "yes"}, 30.0)
    assert parse_check({**entry, "command": ["echo hi"]}, 30.0).shell is True
    assert parse_check({**entry, "shell": None}, 30.0).shell is False


# -- (c) resource limits under the full sandbox --------------------------------------------


@needs_root
@needs_nobody
def test_memory_and_cpu_limits_hold_for_a_check_running_as_nobody(
    plugin_dir: Path, make_plugin: MakePlugin
) -> None:
    run = executor(plugin_dir, user=nobody(), no_new_privs=True).run
    hog = make_plugin("hog", "data = bytearray(1024 ** 3)\nprint('allocated')\n",
                      interpreter="/usr/bin/python3 -S")
    result = run(spec(hog, limits=ResourceLimits(memory_mb=100)))
    assert result.status != "ok" and "MemoryError" in result.output
    assert "allocated" not in result.output

    spin = make_plugin("spin", "while :; do :; done")
    result = run(spec(spin, timeout=10, limits=ResourceLimits(cpu_seconds=1)))
    assert (result.status, result.exit_code) == ("unknown", 3)
    assert re.search(r"killed by signal SIG(XCPU|KILL)", result.output)


# -- (d) an unprivileged user ----------------------------------------------------------------


@needs_root
@needs_nobody
def test_a_check_runs_as_nobody_with_no_groups_and_its_output_still_arrives(
    plugin_dir: Path, make_plugin: MakePlugin
) -> None:
    path = make_plugin("whoami", 'echo "uid=$(id -ru) euid=$(id -u) gid=$(id -g) '
                                 'groups=$(id -G)"')
    before = os.getgroups()
    os.setgroups([0, 4])  # the agent's supplementary groups must not reach the check
    try:
        result = executor(plugin_dir, user=nobody()).run(spec(path))
    finally:
        os.setgroups(before)
    assert NOBODY is not None
    assert result.output == (f"uid={NOBODY.pw_uid} euid={NOBODY.pw_uid} "
                             f"gid={NOBODY.pw_gid} groups={NOBODY.pw_gid}")
    assert result.status == "ok"


@needs_root
@needs_nobody
def test_a_shell_check_runs_as_nobody_too(plugin_dir: Path) -> None:
    result = executor(plugin_dir, allow_shell=True, user=nobody()).run(
        spec("id -u", shell=True))
    assert NOBODY is not None and result.output == str(NOBODY.pw_uid)


@needs_root
@needs_nobody
def test_a_plugin_nobody_may_not_execute_is_reported_naming_the_user(
    plugin_dir: Path, make_plugin: MakePlugin
) -> None:
    path = make_plugin("private", "echo secret")
    os.chmod(path, 0o700)  # root's only
    result = executor(plugin_dir, user=nobody()).run(spec(path))
    assert_refused(result, f"cannot execute {path} as user nobody: Permission denied")


def test_check_user_defaults_to_nobody_for_root_and_is_ignored_otherwise(
    caplog: pytest.LogCaptureFixture
) -> None:
    if NOBODY is not None:
        assert check_user(None, euid=0) == nobody()
        assert check_user("nobody", euid=0) == nobody()
        assert check_user(str(NOBODY.pw_uid), euid=0) == nobody()
    assert check_user("root", euid=0) is None  # explicitly: checks stay root
    assert check_user("0", euid=0) is None
    with caplog.at_level(logging.WARNING, logger="agent.sandbox"):
        assert check_user("nobody", euid=1000) is None
    assert "checks.run_as (nobody) is ignored: the agent does not run as root" in caplog.text
    assert DEFAULT_CHECK_USER == "nobody"


def test_resolve_user_takes_names_and_uids() -> None:
    assert resolve_user("root") == CheckUser("root", 0, 0)
    unnamed = next(uid for uid in range(40000, 50000) if not _uid_exists(uid))
    assert resolve_user(str(unnamed)) == CheckUser(str(unnamed), unnamed, unnamed)
    with pytest.raises(LookupError, match="no user 'no-such-user-here'"):
        resolve_user("no-such-user-here")


def _uid_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def write_config(tmp_path: Path, checks: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(f"server: {{address: x}}\nchecks: {{{checks}}}\n")
    return path


def test_checks_sandbox_settings_and_their_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "allowed_paths: [/usr/lib/nagios/plugins]"))
    assert (config.checks.allow_shell, config.checks.run_as, config.checks.no_new_privs) == (
        False, None, True)
    config = load_config(write_config(
        tmp_path, "allow_shell: true, run_as: 0, no_new_privs: false"))
    assert (config.checks.allow_shell, config.checks.run_as, config.checks.no_new_privs) == (
        True, "0", False)


@pytest.mark.parametrize(
    ("checks", "fragment"),
    [("run_as: no-such-user-here", "checks.run_as: no user 'no-such-user-here' on this host"),
     ("run_as: [nobody]", "checks.run_as: expected a user name or uid"),
     ("allow_shell: sometimes", "checks.allow_shell: expected true or false"),
     ("no_new_privs: 1", "checks.no_new_privs: expected true or false")],
)
def test_bad_sandbox_settings_stop_the_agent_naming_the_key(
    tmp_path: Path, checks: str, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(write_config(tmp_path, checks))


@needs_root
def test_root_without_a_nobody_user_must_name_the_check_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.sandbox

    monkeypatch.setattr(agent.sandbox, "DEFAULT_CHECK_USER", "no-such-user-here")
    with pytest.raises(ConfigError, match="default check user 'no-such-user-here' does not "
                                          "exist on this host: set checks.run_as"):
        load_config(write_config(tmp_path, "max_concurrent: 1"))


# -- (e) no_new_privs --------------------------------------------------------------------------


def test_no_new_privs_is_set_in_the_check_and_only_when_asked(
    plugin_dir: Path, make_plugin: MakePlugin
) -> None:
    path = make_plugin("nnp", "grep NoNewPrivs /proc/self/status")
    assert executor(plugin_dir, no_new_privs=True).run(spec(path)).output == "NoNewPrivs:\t1"
    assert executor(plugin_dir).run(spec(path)).output == "NoNewPrivs:\t0"


@pytest.fixture
def setuid_id(plugin_dir: Path) -> str:
    """A set-user-ID root copy of ``id``, in a directory nobody can reach."""
    if os.statvfs(plugin_dir).f_flag & os.ST_NOSUID:
        pytest.skip("the temporary directory is mounted nosuid")
    path = plugin_dir / "suid-id"
    shutil.copy2("/usr/bin/id", path)
    os.chown(path, 0, 0)
    path.chmod(0o4755)
    assert path.stat().st_mode & stat.S_ISUID
    return str(path)


@needs_root
@needs_nobody
def test_a_setuid_root_plugin_gains_nothing_under_no_new_privs(
    plugin_dir: Path, setuid_id: str
) -> None:
    assert NOBODY is not None
    # Without no_new_privs the set-user-ID bit works (what check_icmp relies on)...
    privileged = executor(plugin_dir, user=nobody(), no_new_privs=False).run(spec(setuid_id, "-u"))
    assert privileged.output == "0"
    # ... with it, the program runs with the check user's rights only.
    confined = executor(plugin_dir, user=nobody(), no_new_privs=True).run(spec(setuid_id, "-u"))
    assert confined.output == str(NOBODY.pw_uid)


# -- (f) the environment -----------------------------------------------------------------------


@needs_root
@needs_nobody
def test_the_environment_is_scrubbed_under_the_full_sandbox(
    plugin_dir: Path, make_plugin: MakePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AAMI_SECRET_KEY", "do-not-leak")
    monkeypatch.setenv("HOME", "/root")
    path = make_plugin("env", "exec /usr/bin/env")
    result = executor(plugin_dir, user=nobody(), no_new_privs=True).run(
        spec(path, env={"CHECK_MODE": "fast"}))
    env = dict(line.split("=", 1) for line in result.output.splitlines())
    env.pop("PWD", None)  # set by /bin/sh itself
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                   "CHECK_MODE": "fast"}
