"""The sandbox that runs generated code: each hostile program fails its test and leaves the host as it was.

Needs bubblewrap (Debian: bubblewrap). Skipped without it, unless EVALKIT_REQUIRE_SANDBOX=1 (CI), where it
must be there.
"""

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from evalkit.sandbox import Limits, Outcome, Sandbox, SandboxUnavailable


# an odd file-size limit that only this module's sandbox has: it is in the command line of every process
# the sandbox starts (and of every process those fork), which is how the leak check finds them
MARK = 16_777_259


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(Limits(timeout=2.0, file_size=MARK))
    try:
        box.check()
    except SandboxUnavailable as e:
        if os.environ.get("EVALKIT_REQUIRE_SANDBOX") == "1":
            raise RuntimeError(f"EVALKIT_REQUIRE_SANDBOX=1 but {e}") from None
        pytest.skip(str(e))
    return box


def sandboxed_processes() -> set[int]:
    """Live processes that this module's sandbox started (what it would leave behind if it leaked; a zombie,
    dead and waiting for its parent to read its status, holds nothing)."""
    mark = b"\0" + str(MARK).encode() + b"\0"
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if mark in (entry / "cmdline").read_bytes() and state != "Z":
                    found.add(int(entry.name))
            except (OSError, IndexError):
                pass
    return found


@pytest.fixture()
def host(tmp_path):
    """A file of the host's and the processes before; afterwards: the file is intact, no process was left behind,
    and the host can still start processes and allocate memory."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    assert not sandboxed_processes()
    yield precious
    assert precious.read_text() == "keep me"
    assert not sandboxed_processes()
    assert subprocess.run(["true"]).returncode == 0
    assert len(bytearray(50 << 20)) == 50 << 20


def test_passing_and_failing_programs(sandbox, host):
    ok, wrong, crash = sandbox.run_many(["assert sum([1, 2]) == 3", "assert sum([1, 2]) == 4, 'off by one'",
                                         "def f(:\n    pass"])
    assert ok.passed and not wrong.passed and not crash.passed
    assert wrong.detail == "AssertionError: off by one" and crash.detail.startswith("SyntaxError")


def test_an_endless_loop_is_stopped(sandbox, host):
    for code in ("while True:\n    pass", "import time\ntime.sleep(60)"):
        outcome = sandbox.run(code)
        assert outcome.status in ("timeout", "failed") and not outcome.passed


def test_a_fork_bomb_is_contained(sandbox, host):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert not sandbox.run(bomb + "# 1").passed
    # the limit on processes holds inside: a program sees its forks refused long before the machine's limit
    probe = ("import os, time\nn = 0\ntry:\n    while n < 1000:\n        if os.fork() == 0:\n"
             "            time.sleep(30)\n        n += 1\nexcept OSError:\n    pass\nassert n < 1000, n\n")
    assert sandbox.run(probe).passed


def test_unbounded_allocation_fails(sandbox, host):
    outcome = sandbox.run("blocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 7))")
    assert not outcome.passed and "MemoryError" in outcome.detail


def test_a_programs_memory_is_bounded_across_its_processes(sandbox, host):
    # memory files count against no process limit: refused; the program's children share its process limit,
    # so its memory is at most its processes' address space together (the budget the workers are sized by)
    outcome = sandbox.run("import os\nos.memfd_create('hoard')")
    assert not outcome.passed and "PermissionError" in outcome.detail
    limits = Limits()
    assert limits.budget == limits.memory * limits.processes + limits.tmp_size + (8 << 20) <= 5 << 30
    tight = Sandbox(limits, workers=None)
    available = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable"))
    assert 1 <= tight.workers <= max(1, available // limits.budget)


def test_writes_and_deletes_outside_its_directory_fail(sandbox, host, visible):
    # the host's /tmp is hidden (the program has its own); elsewhere the file system is read-only
    target = visible / "written.txt"
    kept = visible / "kept.txt"
    kept.write_text("keep me too")
    for code in (f"open({str(target)!r}, 'w').write('x')", f"import os\nos.remove({str(kept)!r})",
                 f"import os\nos.remove({str(host)!r})", f"import shutil\nshutil.rmtree({str(visible)!r})",
                 "open('/etc/evalkit-test', 'w')"):
        outcome = sandbox.run(code)
        assert not outcome.passed and any(w in outcome.detail for w in ("Read-only", "Permission", "No such")), outcome
    assert not target.exists() and kept.read_text() == "keep me too" and not Path("/etc/evalkit-test").exists()
    # its own directory is writable, and is fresh for every program
    assert sandbox.run("import os\nopen('mine.txt', 'w').write('x')\nassert os.getcwd() == os.environ['HOME']").passed
    assert sandbox.run("import os\nassert not os.path.exists('mine.txt')  # fresh").passed


@pytest.fixture()
def visible():
    """A directory of the host's that the sandbox sees (read-only): outside /tmp."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="evalkit-sandbox-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path)


def test_the_environment_is_not_inherited(sandbox, host, monkeypatch):
    monkeypatch.setenv("EVALKIT_TEST_API_KEY", "sk-not-for-candidates")
    assert sandbox.run("import os\nassert 'EVALKIT_TEST_API_KEY' not in os.environ\n"
                       "assert set(os.environ) <= {'HOME', 'PATH', 'LANG', 'LC_CTYPE', 'PWD'}, sorted(os.environ)"
                       "# env").passed
    leak = sandbox.run("import os\nraise ValueError(repr(dict(os.environ)))")
    assert "sk-not-for-candidates" not in leak.detail and "HOME" in leak.detail


def test_no_host_files_or_sockets(sandbox, host, tmp_path):
    """Only the system's directories, a few /etc files and the interpreter are there: no home directories,
    no /run or /var with their Unix sockets (a connection to one would cross any network namespace)."""
    sock_path = Path("/var/tmp") / f"evalkit-test-{os.getpid()}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen()
    try:
        for code in (f"import socket\nsocket.socket(socket.AF_UNIX).connect({str(sock_path)!r})",
                     "import os\nos.listdir('/home')", "import os\nos.listdir('/run')", "open('/etc/shadow')",
                     "import os\nos.listdir('/root/.ssh')" if os.path.isdir("/root/.ssh") else "open('/root/x', 'w')"):
            assert not sandbox.run(code).passed, code
        assert sandbox.run("import os, sys\nassert os.path.isdir('/usr/lib') and os.path.isdir(sys.prefix)").passed
    finally:
        server.close()
        sock_path.unlink()


def test_shared_memory_is_capped_and_dev_is_read_only(sandbox, host):
    assert not sandbox.run("open('/dev/shm/big', 'wb').write(b'x' * (64 << 20))").passed
    assert not sandbox.run("open('/dev/evalkit', 'w')").passed


def test_programs_running_at_once_do_not_share_the_process_limit(host):
    # one program holds 6 of its 8 processes while another starts 6 of its own: under root, were both
    # the same user, the second would be refused
    box = Sandbox(Limits(timeout=5.0, file_size=MARK), workers=2)
    hog = ("import os, time\nkids = []\nfor _ in range(6):\n    pid = os.fork()\n    if pid == 0:\n"
           "        time.sleep(3)\n        os._exit(0)\n    kids.append(pid)\nfor k in kids:\n    os.waitpid(k, 0)\n")
    outcomes = box.run_many([hog + "# a", hog + "# b"])
    assert all(o.passed for o in outcomes), outcomes


def test_no_network(sandbox, host):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)))
    thread.start()
    try:
        outcome = sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
    finally:
        thread.join()
        server.close()
    assert not outcome.passed and accepted == [None]


def _accept(server):
    try:
        return server.accept()
    except TimeoutError:
        return None


def test_an_early_exit_or_closed_stdin_does_not_pass(sandbox, host):
    for code in ("import sys\nsys.exit(0)\nassert False", "import os\nos._exit(0)\nassert False", "input()",
                 # the token that marks a pass is not within the program's reach
                 "import __main__, os\nos.write(1, b'\\n' + getattr(__main__, 'token', b'x') + b'\\n')\nos._exit(0)",
                 "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'1\\n')\n    except OSError:\n"
                 "        pass\nos._exit(0)"):
        assert not sandbox.run(code).passed, code
    # a __main__ block of the candidate does not run (it is not the main program)
    assert sandbox.run("if __name__ == '__main__':\n    raise SystemExit(1)\nassert True").passed


def test_large_output_is_read_through_and_only_its_end_kept(sandbox, host):
    outcome = sandbox.run("import sys\nfor _ in range(2000):\n    sys.stdout.write('x' * 100_000)\n"
                          "assert False, 'the end'")
    assert outcome == Outcome("failed", "AssertionError: the end")
    # a file is still capped
    assert not sandbox.run("open('big', 'wb').write(b'x' * (20 << 20))").passed


def test_system_v_shared_memory_and_keyrings_are_refused(sandbox, host):
    shm = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "assert libc.shmget(0, 1 << 20, 0o1600) == -1 and ctypes.get_errno() == 1")
    import pyseccomp

    keyctl = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "keyctl")
    keys = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"assert libc.syscall({keyctl}, 0, -3, 0) == -1 and ctypes.get_errno() == 1  # keyctl(GET_KEYRING_ID, @s)")
    assert sandbox.run(shm).passed and sandbox.run(keys).passed


def test_programs_see_themselves_as_a_module(sandbox, host):
    code = ("from __future__ import annotations\nimport dataclasses, pickle, sys\n"
            "@dataclasses.dataclass\nclass P:\n    x: int\n"
            "assert pickle.loads(pickle.dumps(P(1))) == P(1) and sys.argv == ['candidate.py']\nsys.stdout.close()")
    assert sandbox.run(code).passed


def test_outcomes_are_cached_by_program_and_limits(sandbox, host, monkeypatch):
    ran = []
    real = Sandbox._run
    monkeypatch.setattr(Sandbox, "_run", lambda self, program, slot: ran.append(program.code) or real(self, program, slot))
    a, b = "assert 1 == 1  # cached a", "assert 2 == 3  # cached b"
    outcomes = sandbox.run_many([a, b, a])
    assert [o.passed for o in outcomes] == [True, False, True] and sorted(ran) == sorted([a, b])
    assert sandbox.run(a).passed and len(ran) == 2  # run before: not again
    assert Sandbox(Limits(timeout=2.5)).run(a).passed and len(ran) == 3  # other limits: another outcome
