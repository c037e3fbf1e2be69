"""agent/containment.py: what a check's processes may execute, not only its command.

The Landlock tests run real plugins of Debian's monitoring-plugins under a real ruleset
(the kernel of this machine kind offers Landlock); a marker file that a shell would create
shows whether a shell ran, which is stronger than reading the plugin's output."""

from __future__ import annotations

import errno
import os
import pwd
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import containment
from agent.config import load_config
from agent.containment import ExecContainment
from agent.errors import ConfigError
from agent.executor import Executor
from agent.limits import DEFAULT_LIMITS
from agent.model import CheckResult, CheckSpec
from agent.runner import build_executor
from agent.sandbox import CheckUser, make_preexec
from agent.spawner import Spawner
from agent.status import StatusBoard, render

pytestmark = pytest.mark.timeout(30)

PLUGINS = Path("/usr/lib/nagios/plugins")
NEGATE, CHECK_DUMMY, CHECK_DISK = (str(PLUGINS / name)
                                   for name in ("negate", "check_dummy", "check_disk"))
needs_plugins = pytest.mark.skipif(not Path(NEGATE).exists() or not Path(CHECK_DUMMY).exists(),
                                   reason="Debian's monitoring-plugins are not installed")
needs_landlock = pytest.mark.skipif(not containment.landlock_abi(),
                                    reason="this kernel does not offer Landlock")
LOADER = "/lib64/ld-linux-x86-64.so.2"
needs_loader_path = pytest.mark.skipif(
    not Path(LOADER).exists() or os.path.realpath(LOADER) not in containment.system_loaders(),
    reason=f"the dynamic loader is not {LOADER} here")
NOBODY = next((p for p in pwd.getpwall() if p.pw_name == "nobody"), None)

MakeExecutor = Callable[..., Executor]


@pytest.fixture
def marker(plugin_dir: Path) -> Iterator[Path]:
    """A file a shell would create if one ran (in a directory ``nobody`` may write)."""
    path = plugin_dir / "a-shell-ran"
    plugin_dir.chmod(0o777)
    yield path
    plugin_dir.chmod(0o755)


@pytest.fixture
def make_executor(plugin_dir: Path) -> Iterator[MakeExecutor]:
    """Executors allowed the monitoring-plugins and ``plugin_dir``; closed afterwards."""
    made: list[Executor] = []

    def make(mode: str = "landlock", executables: tuple[str, ...] = (),
             **options: object) -> Executor:
        allowed = [str(PLUGINS), str(plugin_dir)]
        resolved = containment.resolve(mode, allowed_dirs=allowed, executables=executables)
        executor = Executor(allowed, DEFAULT_LIMITS, containment=resolved,
                            **options)  # type: ignore[arg-type]
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.close()


def spec(*command: str, **kwargs: object) -> CheckSpec:
    return CheckSpec(id="c", name="c", command=tuple(command), interval=60.0, timeout=5.0,
                     **kwargs)  # type: ignore[arg-type]


def script(plugin_dir: Path, name: str, body: str) -> str:
    path = plugin_dir / name
    path.write_text(f"#!/bin/sh\n{body}")
    path.chmod(0o755)
    return str(path)


def assert_unknown(result: CheckResult, reason: str) -> None:
    assert result.status == "unknown", result
    assert reason in result.output, result.output


# The ways a check starts: from a spawner or forked from the agent; as the agent (root in
# CI) or as nobody, with or without no_new_privs (root then relies on CAP_SYS_ADMIN).
START_WAYS = [
    pytest.param({"use_spawner": True}, id="spawner"),
    pytest.param({"use_spawner": False}, id="forked"),
    pytest.param({"use_spawner": True, "no_new_privs": True, "as_nobody": True},
                 id="spawner-nobody-nnp"),
    pytest.param({"use_spawner": False, "no_new_privs": False, "as_nobody": True},
                 id="forked-nobody-no-nnp"),
]


def start_options(way: dict[str, object]) -> dict[str, object]:
    options = dict(way)
    if options.pop("as_nobody", False):
        if os.geteuid() != 0 or NOBODY is None:
            pytest.skip("switching to nobody needs root and a user nobody")
        options["user"] = CheckUser(name="nobody", uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)
    return options


@needs_landlock
@needs_plugins
@pytest.mark.parametrize("way", START_WAYS)
def test_negate_from_an_allowed_directory_cannot_run_a_shell(
    make_executor: MakeExecutor, marker: Path, way: dict[str, object]
) -> None:
    executor = make_executor(**start_options(way))
    result = executor.run(spec(NEGATE, "-o", "OK", "/bin/sh", "-c", f"touch {marker}"))
    assert not marker.exists(), "a shell ran"
    assert_unknown(result, "exec containment (landlock): /bin/sh is outside what checks may "
                           "execute")


@needs_landlock
@needs_plugins
@pytest.mark.parametrize("way", START_WAYS)
def test_real_elf_plugins_still_run_under_landlock(
    make_executor: MakeExecutor, way: dict[str, object]
) -> None:
    executor = make_executor(**start_options(way))
    assert executor.containment.mode == "landlock"
    dummy = executor.run(spec(CHECK_DUMMY, "0", "all good"))
    assert (dummy.status, dummy.output) == ("ok", "OK: all good")
    disk = executor.run(spec(CHECK_DISK, "-w", "1%", "-c", "1%", "-p", "/"))
    assert disk.output.startswith("DISK "), disk.output
    assert {item["label"] for item in disk.perfdata} == {"/"}


@needs_landlock
@needs_plugins
def test_a_wrapper_may_still_run_plugins_inside_the_containment(
    make_executor: MakeExecutor,
) -> None:
    result = make_executor().run(spec(NEGATE, CHECK_DUMMY, "2", "broken"))
    assert (result.status, result.output) == ("ok", "CRITICAL: broken")


@needs_landlock
@pytest.mark.skipif(not Path("/usr/bin/ssh").exists() or not (PLUGINS / "check_by_ssh").exists(),
                    reason="no ssh or no check_by_ssh")
def test_check_by_ssh_with_ssh_allowed_still_cannot_run_a_proxy_command(
    make_executor: MakeExecutor, marker: Path
) -> None:
    # ssh runs ProxyCommand with /bin/sh -c, which stays outside the containment.
    executor = make_executor(executables=("/usr/bin/ssh",))
    result = executor.run(spec(str(PLUGINS / "check_by_ssh"), "-H", "127.0.0.1", "-o",
                               f"ProxyCommand=/bin/sh -c 'touch {marker}'", "-C", "true"))
    assert not marker.exists(), "a shell ran"
    assert_unknown(result, "/bin/sh: Permission denied")


@needs_landlock
@needs_plugins
@needs_loader_path
@pytest.mark.parametrize(
    ("loader_argument", "env"),
    [(LOADER, {}),
     ("lib64/../lib64/ld-linux-x86-64.so.2", {}),  # relative to the plugin's cwd, /
     ("ld-linux-x86-64.so.2", {"PATH": "/lib64"})],
)
def test_arguments_naming_the_dynamic_loader_are_refused_before_start(
    make_executor: MakeExecutor, marker: Path, loader_argument: str, env: dict[str, str]
) -> None:
    # The loader must stay executable for ELF plugins to start, and it loads any program
    # without the kernel's execute check: ``negate ld.so /bin/sh`` would run a shell.
    result = make_executor().run(spec(NEGATE, "-o", "OK", loader_argument, "/bin/sh", "-c",
                                      f"touch {marker}", env=env))
    assert not marker.exists(), "a shell ran through the loader"
    assert_unknown(result, f"argument {loader_argument!r} names the dynamic loader")


@needs_landlock
def test_a_script_whose_interpreter_is_not_allowed_is_unknown_naming_the_key(
    make_executor: MakeExecutor, plugin_dir: Path
) -> None:
    path = script(plugin_dir, "hello", "echo hello\n")
    result = make_executor().run(spec(path))
    assert_unknown(result, "its interpreter /bin/sh is outside what checks may execute "
                           "(exec containment: landlock); list it in "
                           "checks.allowed_executables")


@needs_landlock
@pytest.mark.parametrize("use_spawner", [True, False], ids=["spawner", "forked"])
def test_an_allowed_interpreter_runs_its_script_but_not_other_programs(
    make_executor: MakeExecutor, plugin_dir: Path, use_spawner: bool
) -> None:
    path = script(plugin_dir, "runs-id", "echo start\n/usr/bin/id -u || echo refused: $?\n")
    executor = make_executor(executables=("/bin/sh",), use_spawner=use_spawner)
    result = executor.run(spec(path))
    assert result.status == "ok"
    assert result.output.splitlines()[0] == "start"
    assert result.output.splitlines()[-1] == "refused: 126", result.output


@needs_landlock
@needs_plugins
def test_the_spawner_itself_may_execute_nothing_outside_the_containment(
    plugin_dir: Path,
) -> None:
    resolved = containment.resolve("landlock", allowed_dirs=[str(PLUGINS)])
    ruleset = containment.open_ruleset(resolved)
    try:
        spawner = Spawner(make_preexec(DEFAULT_LIMITS), 0.0,
                          exec_ruleset=(ruleset, containment.restrict_self_syscall()))
    finally:
        os.close(ruleset)  # the spawner holds its domain; it needs the fd no more
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(OSError) as refused:
            spawner.spawn("/bin/sh", ["sh", "-c", "true"], {}, write_fd)
        assert refused.value.errno == errno.EACCES
        started = spawner.spawn(CHECK_DUMMY, ["check_dummy", "0"], {}, write_fd)
        os.close(write_fd)
        write_fd = -1
        assert os.read(read_fd, 100) == b"OK\n"
        assert started.reap(5) and started.returncode == 0
    finally:
        spawner.close()
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


@needs_landlock
def test_a_landlock_step_that_fails_in_the_child_fails_the_check_closed(
    make_executor: MakeExecutor, plugin_dir: Path, marker: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_restrict(ruleset: int) -> Callable[[], None]:
        def restrict_self() -> None:
            raise OSError("landlock_restrict_self failed")
        return restrict_self

    monkeypatch.setattr(containment, "make_restrict_self", cannot_restrict)
    path = script(plugin_dir, "touches", f"touch {marker}\n")
    executor = make_executor(executables=("/bin/sh", "/usr/bin"), use_spawner=False)
    result = executor.run(spec(path))
    assert not marker.exists()
    assert_unknown(result, "could not set up the check's sandbox")
    assert "exec containment landlock (ABI" in result.output


# -- the denylist, where the kernel offers no Landlock --------------------------------------


@needs_plugins
@pytest.mark.parametrize("use_spawner", [True, False], ids=["spawner", "forked"])
def test_the_denylist_refuses_plugins_that_run_other_programs_before_start(
    make_executor: MakeExecutor, marker: Path, use_spawner: bool
) -> None:
    executor = make_executor("denylist", use_spawner=use_spawner)
    result = executor.run(spec(NEGATE, "-o", "OK", "/bin/sh", "-c", f"touch {marker}"))
    assert not marker.exists(), "a shell ran"
    assert_unknown(result, f"{NEGATE} runs other programs, which the exec containment in "
                           "use (denylist: checks.exec_containment is denylist) cannot "
                           "restrict: refused")
    assert executor.run(spec(CHECK_DUMMY, "0", "fine")).output == "OK: fine"


@needs_plugins
def test_the_denylist_knows_a_wrapper_by_the_name_it_is_called_by(
    make_executor: MakeExecutor, plugin_dir: Path
) -> None:
    # A busybox applet is a symlink named after the applet: the name decides what it does.
    (plugin_dir / "timeout").symlink_to(CHECK_DUMMY)
    result = make_executor("denylist").run(spec(str(plugin_dir / "timeout"), "0"))
    assert_unknown(result, "runs other programs")


@needs_plugins
def test_auto_falls_back_to_the_denylist_without_landlock(
    plugin_dir: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(containment, "landlock_abi", lambda: 0)
    resolved = containment.resolve("auto", allowed_dirs=[str(PLUGINS)])
    assert resolved.mode == "denylist"
    assert resolved.describe() == ("denylist (no Landlock: this kernel does not offer "
                                   "Landlock (Linux 5.13 or later with landlock among its "
                                   "security modules))")
    executor = Executor([str(PLUGINS)], DEFAULT_LIMITS, containment=resolved)
    try:
        result = executor.run(spec(NEGATE, "-o", "OK", "/bin/sh", "-c", f"touch {marker}"))
        assert_unknown(result, "runs other programs")
        assert not marker.exists()
    finally:
        executor.close()


def test_landlock_asked_for_where_it_cannot_apply_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(containment, "landlock_abi", lambda: 0)
    with pytest.raises(containment.ContainmentUnavailable,
                       match="checks.exec_containment is landlock, but this kernel does "
                             "not offer Landlock"):
        containment.resolve("landlock", allowed_dirs=[str(PLUGINS)])


def test_landlock_without_no_new_privs_needs_cap_sys_admin(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(containment, "landlock_abi", lambda: 7)
    monkeypatch.setattr(containment, "_process_status_flag", lambda field, bit: False)
    with pytest.raises(containment.ContainmentUnavailable,
                       match=re.escape("Landlock needs checks.no_new_privs: true")):
        containment.resolve("landlock", allowed_dirs=["/"], no_new_privs=False)
    assert containment.resolve("landlock", allowed_dirs=["/"]).mode == "landlock"


# -- configuration and status --------------------------------------------------------------


def write_config(tmp_path: Path, checks: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(f"server: {{address: x}}\nagent: {{state_dir: {tmp_path}/state}}\n"
                    f"checks: {{{checks}}}\n")
    return path


def test_containment_settings_and_their_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, f"allowed_paths: [{PLUGINS}]"))
    assert (config.checks.exec_containment, config.checks.allowed_executables) == ("auto", ())
    config = load_config(write_config(
        tmp_path, "exec_containment: Denylist, allowed_executables: [/usr/bin/perl]"))
    assert config.checks.exec_containment == "denylist"
    assert config.checks.allowed_executables == ("/usr/bin/perl",)


@pytest.mark.parametrize(
    ("checks", "fragment"),
    [("exec_containment: seccomp",
      "checks.exec_containment: 'seccomp' is not one of auto, landlock, denylist, none"),
     ("exec_containment: off", "checks.exec_containment: expected"),  # YAML: false
     ("allowed_executables: /bin/sh", "checks.allowed_executables: expected a list of paths")],
)
def test_bad_containment_settings_stop_the_agent_naming_the_key(
    tmp_path: Path, checks: str, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(write_config(tmp_path, checks))


def test_landlock_forced_on_a_kernel_without_it_stops_the_agent_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(containment, "landlock_abi", lambda: 0)
    config = load_config(write_config(tmp_path, "exec_containment: landlock"))
    with pytest.raises(ConfigError, match=re.escape(
            f"{config.path}: checks.exec_containment is landlock, but this kernel")):
        build_executor(config)


@needs_landlock
def test_the_configured_executor_is_contained_by_default_and_the_status_says_so(
    tmp_path: Path
) -> None:
    executor = build_executor(load_config(write_config(tmp_path, f"allowed_paths: [{PLUGINS}]")))
    try:
        board = StatusBoard(agent_id="a1", server="s", version="v")
        board.show_containment(executor)
        data = board.snapshot()
    finally:
        executor.close()  # type: ignore[attr-defined]
    abi = containment.landlock_abi()
    assert data["exec_containment"]["mode"] == "landlock"
    assert data["exec_containment"]["abi"] == abi
    assert str(PLUGINS) in data["exec_containment"]["executable"]
    assert f"exec containment: landlock (ABI {abi})" in render(data, running=True)


@pytest.mark.parametrize(
    ("summary", "shown"),
    [(ExecContainment(mode="denylist", reason="no Landlock: old kernel").summary(),
      "exec containment: denylist (no Landlock: old kernel)"),
     (containment.NONE.summary(),
      "exec containment: none (checks.exec_containment is none)"),
     (None, "exec containment: not reported")],
)
def test_status_shows_which_containment_is_active(summary: object, shown: str) -> None:
    board = StatusBoard(agent_id="a1", server="s", version="v")
    if summary is not None:
        board.update(exec_containment=summary)
    assert shown in render(board.snapshot(), running=True).splitlines()


def test_allow_shell_lets_checks_execute_the_shell(tmp_path: Path) -> None:
    if not containment.landlock_abi():
        pytest.skip("this kernel does not offer Landlock")
    config = load_config(write_config(tmp_path, "allow_shell: true"))
    executor = build_executor(config)
    try:
        assert executor.containment.permits("/bin/sh")  # type: ignore[attr-defined]
        result = executor.run(CheckSpec(id="c", name="c", command=("echo hi",),
                                        interval=60.0, timeout=5.0, shell=True))
        assert result.output == "hi"
    finally:
        executor.close()  # type: ignore[attr-defined]
