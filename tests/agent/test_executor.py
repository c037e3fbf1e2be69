"""agent/executor.py and agent/limits.py: real plugins in real processes."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import limits as rlimits
from agent.executor import Executor
from agent.limits import DEFAULT_LIMITS
from agent.model import CheckResult, CheckSpec, ResourceLimits

NAGIOS_PLUGINS = Path("/usr/lib/nagios/plugins")
CHECK_DUMMY = NAGIOS_PLUGINS / "check_dummy"
CHECK_LOAD = NAGIOS_PLUGINS / "check_load"
needs_check_dummy = pytest.mark.skipif(not CHECK_DUMMY.exists(), reason="no check_dummy")

MakePlugin = Callable[..., str]
# A regression here tends to hang rather than fail: fail fast instead.
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    return directory


@pytest.fixture
def make_plugin(plugin_dir: Path) -> MakePlugin:
    """Write an executable script into the allowed directory; returns its path."""

    def make(name: str, body: str, interpreter: str = "/bin/sh", mode: int = 0o755) -> str:
        path = plugin_dir / name
        path.write_text(f"#!{interpreter}\n{body}")
        path.chmod(mode)
        return str(path)

    return make


@pytest.fixture
def executor(plugin_dir: Path) -> Executor:
    return Executor([str(plugin_dir), str(NAGIOS_PLUGINS)], DEFAULT_LIMITS)


def spec(*command: str, timeout: float = 5.0, **kwargs: object) -> CheckSpec:
    return CheckSpec(
        id="check-1",
        name="check one",
        command=tuple(command),
        interval=60.0,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are still alive (zombies are dead: not counted)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


def assert_group_dies(pgid: int, within: float = 0.5) -> None:
    """SIGKILL is delivered asynchronously: a member may need a moment to finish dying."""
    deadline = time.monotonic() + within
    while live_group_members(pgid):
        if time.monotonic() > deadline:
            raise AssertionError(f"group {pgid} still has {live_group_members(pgid)}")
        time.sleep(0.01)


def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


# -- exit codes and output -------------------------------------------------------------


@needs_check_dummy
@pytest.mark.parametrize(
    ("code", "status"), [(0, "ok"), (1, "warning"), (2, "critical"), (3, "unknown")]
)
def test_nagios_exit_codes_map_to_statuses(executor: Executor, code: int, status: str) -> None:
    result = executor.run(spec(str(CHECK_DUMMY), str(code), "hello"))
    assert (result.status, result.exit_code) == (status, code)
    assert "hello" in result.output


def test_any_other_exit_code_is_unknown_and_kept(
    executor: Executor, make_plugin: MakePlugin
) -> None:
    result = executor.run(spec(make_plugin("seven", "echo odd; exit 7")))
    assert (result.status, result.exit_code, result.output) == ("unknown", 7, "odd")


@needs_check_dummy
def test_perfdata_is_split_from_the_output(executor: Executor) -> None:
    result = executor.run(spec(str(CHECK_DUMMY), "0", "all fine | 'a b'=1.5s;2;3;0;10"))
    assert result.output == "OK: all fine"
    assert result.perfdata == [
        {
            "label": "a b",
            "value": 1.5,
            "uom": "s",
            "warn": 2.0,
            "crit": 3.0,
            "min": 0.0,
            "max": 10.0,
        }
    ]


@pytest.mark.skipif(not CHECK_LOAD.exists(), reason="no check_load")
def test_real_check_load_reports_its_three_load_averages(executor: Executor) -> None:
    result = executor.run(spec(str(CHECK_LOAD), "-w", "1000,1000,1000", "-c", "2000,2000,2000"))
    assert result.status == "ok", result.output
    assert [p["label"] for p in result.perfdata] == ["load1", "load5", "load15"]
    assert all(p["crit"] == 2000.0 for p in result.perfdata)


@needs_check_dummy
def test_a_bare_plugin_name_is_looked_up_in_the_allowed_paths(executor: Executor) -> None:
    result = executor.run(spec("check_dummy", "1", "by name"))
    assert (result.status, result.output) == ("warning", "WARNING: by name")


def test_stderr_is_merged_into_the_output(executor: Executor, make_plugin: MakePlugin) -> None:
    result = executor.run(spec(make_plugin("both", "echo out; echo err >&2; exit 2")))
    assert result.status == "critical"
    assert result.output.splitlines() == ["out", "err"]


def test_output_is_capped_with_a_visible_marker_and_the_plugin_never_blocks(
    plugin_dir: Path, make_plugin: MakePlugin
) -> None:
    executor = Executor([str(plugin_dir)], DEFAULT_LIMITS, output_limit_bytes=1000)
    # 1 MB: far more than a pipe buffer, so a reader that stopped at the cap would hang.
    path = make_plugin("chatty", "head -c 1000000 /dev/zero | tr '\\0' 'x'; echo; exit 1")
    started = time.monotonic()
    result = executor.run(spec(path, timeout=10))
    assert time.monotonic() - started < 5
    assert result.status == "warning"  # the plugin ran to its own end
    assert result.output.endswith("[output truncated: kept 1000 of 1000001 bytes]")
    assert len(result.output.encode()) <= 1000 + 60


def test_truncation_does_not_parse_a_half_written_perfdata_item(
    plugin_dir: Path, make_plugin: MakePlugin
) -> None:
    executor = Executor([str(plugin_dir)], DEFAULT_LIMITS, output_limit_bytes=40)
    # The cap falls inside "third=123456789": "third=1234" must not become a value.
    path = make_plugin("cut", "echo 'OK | first=1 second=123456789 third=123456789'")
    result = executor.run(spec(path))
    assert [(p["label"], p["value"]) for p in result.perfdata] == [
        ("first", 1.0),
        ("second", 123456789.0),
    ]
    assert "truncated" in result.output


def test_invalid_utf8_is_replaced_not_fatal(executor: Executor, make_plugin: MakePlugin) -> None:
    result = executor.run(spec(make_plugin("bytes", r"printf 'OK \377\376 caf\303\251\n'")))
    assert result.status == "ok"
    assert result.output == "OK \ufffd\ufffd café"


# -- timeouts and signals --------------------------------------------------------------


def test_timeout_kills_the_whole_tree_even_a_grandchild_holding_stdout(
    executor: Executor, make_plugin: MakePlugin, tmp_path: Path
) -> None:
    pid_file, termed = tmp_path / "pid", tmp_path / "termed"
    # The grandchild records SIGTERM: the whole group gets the polite signal first.
    grandchild = f"trap 'echo yes > {termed}; exit 0' TERM; while :; do sleep 0.02; done"
    path = make_plugin(
        "hang", f'echo partial\nsh -c "{grandchild}" &\necho $$ > {pid_file}\nsleep 1000\n'
    )
    started = time.monotonic()
    result = executor.run(spec(path, timeout=0.5))
    elapsed = time.monotonic() - started

    assert (result.status, result.exit_code) == ("critical", 2)
    # What the plugin said before it was killed follows (the shell may add "Terminated").
    assert result.output.splitlines()[:2] == ["CRITICAL: check timed out after 0.5s", "partial"]
    assert elapsed < 0.5 + 1.0
    assert_group_dies(int(wait_for_file(pid_file)))  # the grandchild included
    assert wait_for_file(termed, timeout=0.5) == "yes"


def test_a_background_process_keeping_stdout_open_counts_as_still_running(
    executor: Executor, make_plugin: MakePlugin, tmp_path: Path
) -> None:
    # The plugin itself exits 0 at once; its child holds the pipe. We must not read
    # forever: the check times out and the leftover is killed.
    pid_file = tmp_path / "pid"
    path = make_plugin("daemonish", f"sleep 1000 &\necho $$ > {pid_file}\necho started\nexit 0\n")
    started = time.monotonic()
    result = executor.run(spec(path, timeout=0.5))
    assert time.monotonic() - started < 1.5
    assert result.status == "critical" and "timed out" in result.output
    assert_group_dies(int(wait_for_file(pid_file)))


def test_a_plugin_ignoring_sigterm_is_killed(
    executor: Executor, make_plugin: MakePlugin, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    path = make_plugin(
        "stubborn", f"trap '' TERM\necho $$ > {pid_file}\nwhile :; do sleep 0.05; done\n"
    )
    started = time.monotonic()
    result = executor.run(spec(path, timeout=0.3))
    assert time.monotonic() - started < 0.3 + 1.0
    assert result.status == "critical"
    assert_group_dies(int(wait_for_file(pid_file)))


def test_death_by_signal_is_unknown_and_names_the_signal(
    executor: Executor, make_plugin: MakePlugin
) -> None:
    result = executor.run(spec(make_plugin("suicide", "echo before\nkill -USR1 $$\nsleep 5\n")))
    assert (result.status, result.exit_code) == ("unknown", 3)
    assert result.output.splitlines() == ["UNKNOWN: check was killed by signal SIGUSR1", "before"]


def test_each_plugin_runs_in_its_own_session(executor: Executor, make_plugin: MakePlugin) -> None:
    result = executor.run(spec(make_plugin("ids", "ps -o sid= -o pgid= -p $$")))
    sid, pgid = (int(x) for x in result.output.split())
    assert sid == pgid != os.getsid(0)


# -- refusing to run -------------------------------------------------------------------


def assert_refused(result: CheckResult, reason: str) -> None:
    assert (result.status, result.exit_code, result.perfdata) == ("unknown", 3, [])
    assert result.output.startswith("UNKNOWN: ")
    assert reason in result.output


def test_command_outside_allowed_paths_is_refused(executor: Executor) -> None:
    assert_refused(executor.run(spec("/bin/true")), "outside the allowed paths")


def test_symlink_escaping_the_allowed_paths_is_refused(
    executor: Executor, plugin_dir: Path
) -> None:
    (plugin_dir / "innocent").symlink_to("/bin/true")
    result = executor.run(spec(str(plugin_dir / "innocent")))
    assert_refused(result, "resolves to /usr/bin/true")


def test_dot_dot_escaping_the_allowed_paths_is_refused(
    executor: Executor, plugin_dir: Path
) -> None:
    escape = str(plugin_dir) + "/.." * 20 + "/bin/true"
    assert_refused(executor.run(spec(escape)), "outside the allowed paths")


def test_symlink_to_another_allowed_plugin_is_fine(
    executor: Executor, plugin_dir: Path, make_plugin: MakePlugin
) -> None:
    target = make_plugin("real", "echo real; exit 0")
    (plugin_dir / "alias").symlink_to(target)
    result = executor.run(spec(str(plugin_dir / "alias")))
    assert (result.status, result.output) == ("ok", "real")


def test_missing_command_is_unknown(executor: Executor, plugin_dir: Path) -> None:
    assert_refused(executor.run(spec(str(plugin_dir / "nope"))), "not found")


def test_not_executable_is_unknown(executor: Executor, make_plugin: MakePlugin) -> None:
    assert_refused(
        executor.run(spec(make_plugin("noexec", "exit 0", mode=0o644))), "not executable"
    )


def test_directory_is_unknown(executor: Executor, plugin_dir: Path) -> None:
    (plugin_dir / "sub").mkdir()
    assert_refused(executor.run(spec(str(plugin_dir / "sub"))), "not a regular file")


def test_file_the_kernel_cannot_execute_is_unknown(executor: Executor, plugin_dir: Path) -> None:
    path = plugin_dir / "noshebang"
    path.write_bytes(b"\x00\x01garbage")
    path.chmod(0o755)
    assert_refused(executor.run(spec(str(path))), "cannot execute")


def test_relative_and_empty_commands_are_refused(executor: Executor) -> None:
    assert_refused(executor.run(spec("plugins/x")), "relative")
    assert_refused(executor.run(spec()), "empty command")


def test_loader_variables_in_env_are_refused_and_nothing_runs(
    executor: Executor, make_plugin: MakePlugin, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    path = make_plugin("innocent", f"touch {marker}")
    result = executor.run(spec(path, env={"LD_PRELOAD": "/tmp/evil.so"}))
    assert_refused(result, "LD_PRELOAD")
    assert not marker.exists()


def test_invalid_limits_are_unknown_not_an_exception(
    executor: Executor, make_plugin: MakePlugin
) -> None:
    result = executor.run(spec(make_plugin("ok", "exit 0"), limits=ResourceLimits(memory_mb=0)))
    assert_refused(result, "memory_mb")


# -- environment -----------------------------------------------------------------------


def test_environment_is_scrubbed_to_path_lang_and_the_check_env(
    executor: Executor, make_plugin: MakePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AAMI_SECRET_KEY", "do-not-leak")
    result = executor.run(spec(make_plugin("env", "exec /usr/bin/env"), env={"FOO": "bar baz"}))
    env = dict(line.split("=", 1) for line in result.output.splitlines())
    env.pop("PWD", None)  # added by /bin/sh itself
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "FOO": "bar baz"}


# -- resource limits -------------------------------------------------------------------


def read_limits(output: str) -> dict[str, str]:
    """/proc/<pid>/limits as {name: soft limit}."""
    limits = {}
    for line in output.splitlines()[1:]:
        name = line[:26].strip()
        limits[name] = line[26:].split()[0]
    return limits


def test_default_limits_are_applied(executor: Executor, make_plugin: MakePlugin) -> None:
    result = executor.run(spec(make_plugin("limits", "cat /proc/self/limits")))
    limits = read_limits(result.output)
    assert limits["Max cpu time"] == "60"
    assert limits["Max address space"] == str(512 * 1024 * 1024)
    assert limits["Max open files"] == "1024"
    assert limits["Max file size"] == str(64 * 1024 * 1024)


def test_check_limits_override_defaults_field_by_field(
    executor: Executor, make_plugin: MakePlugin
) -> None:
    check_limits = ResourceLimits(cpu_seconds=7, open_files=64, processes=50)
    result = executor.run(spec(make_plugin("limits", "cat /proc/self/limits"), limits=check_limits))
    limits = read_limits(result.output)
    assert limits["Max cpu time"] == "7"
    assert limits["Max open files"] == "64"
    assert limits["Max processes"] == "50"
    assert limits["Max address space"] == str(512 * 1024 * 1024)  # default kept


def test_memory_limit_stops_a_plugin_allocating_a_gigabyte(
    executor: Executor, make_plugin: MakePlugin
) -> None:
    path = make_plugin(
        "hog",
        "data = bytearray(1024 ** 3)\nprint('allocated', len(data))\n",
        interpreter="/usr/bin/python3 -S",
    )
    result = executor.run(spec(path, limits=ResourceLimits(memory_mb=100)))
    assert result.status != "ok"
    assert result.exit_code != 0
    assert "allocated" not in result.output
    assert "MemoryError" in result.output


def test_cpu_limit_kills_a_busy_loop(executor: Executor, make_plugin: MakePlugin) -> None:
    path = make_plugin("spin", "while :; do :; done")
    started = time.monotonic()
    result = executor.run(spec(path, timeout=10, limits=ResourceLimits(cpu_seconds=1)))
    assert time.monotonic() - started < 5
    assert (result.status, result.exit_code) == ("unknown", 3)
    assert result.output == ("UNKNOWN: check was killed by signal SIGXCPU: it used up its "
                             "CPU time limit (1 s, cpu_seconds)")


def test_file_size_limit_stops_a_plugin_and_says_so(
    executor: Executor, make_plugin: MakePlugin, tmp_path: Path
) -> None:
    target = tmp_path / "big"
    path = make_plugin("writer", f"exec head -c 3145728 /dev/zero > {target}")
    result = executor.run(spec(path, limits=ResourceLimits(file_size_mb=1)))
    assert (result.status, result.exit_code) == ("unknown", 3)
    assert result.output == ("UNKNOWN: check was killed by signal SIGXFSZ: it wrote past its "
                             "file size limit (1 MB, file_size_mb)")
    assert target.stat().st_size == 1024 * 1024


def test_preexec_applies_the_same_limits_in_the_child() -> None:
    limits = ResourceLimits(cpu_seconds=3, memory_mb=200, open_files=100, file_size_mb=1)
    out = subprocess.run(
        ["cat", "/proc/self/limits"],
        preexec_fn=rlimits.make_preexec(limits),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    got = read_limits(out)
    assert (got["Max cpu time"], got["Max open files"]) == ("3", "100")
    assert got["Max address space"] == str(200 * 1024 * 1024)
    assert got["Max file size"] == str(1024 * 1024)


def test_limits_are_clamped_to_the_agents_own_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    settings = dict(rlimits.rlimit_settings(ResourceLimits(open_files=hard + 1000)))
    assert settings[resource.RLIMIT_NOFILE] == (hard, hard)


def test_cpu_hard_limit_leaves_a_second_for_sigxcpu() -> None:
    settings = dict(rlimits.rlimit_settings(ResourceLimits(cpu_seconds=5)))
    assert settings[resource.RLIMIT_CPU] == (5, 6)


def test_documented_defaults() -> None:
    assert DEFAULT_LIMITS == ResourceLimits(
        cpu_seconds=60, memory_mb=512, open_files=1024, file_size_mb=64, processes=None
    )
    assert resource.RLIMIT_NPROC not in dict(rlimits.rlimit_settings(DEFAULT_LIMITS))


# -- the result record -----------------------------------------------------------------


def test_result_fields(executor: Executor, make_plugin: MakePlugin) -> None:
    path = make_plugin("slow", "sleep 0.2; echo done")
    before = time.time()
    first = executor.run(spec(path))
    second = executor.run(spec(path))
    assert first.check_id == "check-1"
    assert uuid.UUID(first.result_id).version == 4
    assert first.result_id != second.result_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.executed_at)
    stamp = time.mktime(time.strptime(first.executed_at[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= stamp <= before + 1
    assert 200 <= first.duration_ms < 1000


def test_no_file_descriptors_leak_across_runs(executor: Executor, make_plugin: MakePlugin) -> None:
    path = make_plugin("quick", "echo hi")
    executor.run(spec(path))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        executor.run(spec(path))
    executor.run(spec(make_plugin("hang", "sleep 100"), timeout=0.1))
    assert len(os.listdir("/proc/self/fd")) == before


def test_concurrent_runs_from_threads_do_not_mix_outputs(
    executor: Executor, make_plugin: MakePlugin
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = make_plugin("echo", 'sleep 0.05; echo "$1"')
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: executor.run(spec(path, str(n))), range(32)))
    assert [r.output for r in results] == [str(n) for n in range(32)]
