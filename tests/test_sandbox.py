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

from evalkit.sandbox import TAMPERED, Limits, Outcome, Program, Sandbox, SandboxUnavailable


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
    monkeypatch.setattr(Sandbox, "_run",
                        lambda self, program, slot: ran.append(program.code) or real(self, program, slot))
    a, b = "assert 1 == 1  # cached a", "assert 2 == 3  # cached b"
    outcomes = sandbox.run_many([a, b, a])
    assert [o.passed for o in outcomes] == [True, False, True] and sorted(ran) == sorted([a, b])
    assert sandbox.run(a).passed and len(ran) == 2  # run before: not again
    assert Sandbox(Limits(timeout=2.5)).run(a).passed and len(ran) == 3  # other limits: another outcome


# ---------------------------------------------------------------------------- the verdict is out of reach


def test_the_harness_is_out_of_the_programs_reach(sandbox, host):
    """The process that holds the token and the tests (the program's parent) cannot be opened by the program: not
    its memory, maps, environment, file descriptors or working directory (opened through libc, under the harness's
    own watch)."""
    probe = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nreached = []\nparent = os.getppid()\n"
             "for what in ('mem', 'maps', 'environ', 'fd', 'cwd', f'task/{parent}/mem'):\n"
             "    fd = libc.open(f'/proc/{parent}/{what}'.encode(), os.O_RDONLY)\n"
             "    if fd >= 0 or ctypes.get_errno() not in (1, 13):\n"
             "        reached.append((what, fd, ctypes.get_errno()))\n"
             "assert not reached, reached\n")
    outcome = sandbox.run(probe)
    assert outcome.passed, outcome
    # through Python's open: refused too, and seen
    outcome = sandbox.run("import os\nopen(f'/proc/{os.getppid()}/mem', 'rb')")
    assert not outcome.passed and "PermissionError" in outcome.detail
    assert any("/mem (another process's" in t for t in outcome.tamper), outcome


def test_neither_the_token_nor_the_tests_are_in_the_programs_memory(sandbox, host):
    """The program's process is forked before the harness reads its input: a search of the program's own memory
    finds no trace of the tests that follow it."""
    import secrets

    secret = "evalkit-secret-" + secrets.token_hex(16)
    search = ("import re\nfound = []\nwith open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb') as mem:\n"
              "    for line in maps:\n"
              "        span, perms = line.split()[:2]\n"
              "        if not perms.startswith('r') or '[vvar' in line or '[vsyscall' in line:\n"
              "            continue\n"
              "        start, end = (int(x, 16) for x in span.split('-'))\n"
              "        try:\n"
              "            mem.seek(start)\n"
              "            found += re.findall(rb'evalkit-secret-[0-9a-f]{32}', mem.read(end - start))\n"
              "        except OSError:\n"
              "            pass\n"
              "assert not found, found\n"
              "def f():\n    return 1\n")
    roomy = Sandbox(Limits(timeout=10.0, file_size=MARK))  # reading all its memory takes a while on a busy machine
    outcome = roomy.run(Program(search, f"# {secret}\nassert f() == 1  # {secret}\n", entry_point="f"))
    assert outcome.passed, outcome


GOOD = "def sort_it(xs):\n    return sorted(xs)\n"
TESTS = ("def check(candidate):\n    assert candidate([3, 1, 2]) == [1, 2, 3]\n    assert candidate([]) == []\n\n"
         "check(sort_it)\n")
WRONG = "def sort_it(xs):\n    return xs\n"

# writes "finished" on every file descriptor it may have: the harness's pipe among them
PIPE = "import os\nfor fd in range(3, 2000):\n    try:\n        os.write(fd, b'1')\n    except OSError:\n        pass\n"
# Ways to pass without passing, each on a wrong solution (the first three failed already under the harness that ran
# the tests in the program's own process, the others passed there): what it does, its code, its tests (None: TESTS),
# what the harness saw
TRICKS = [
    ("writes the finished pipe, goes on", PIPE + WRONG, None, "writes to the harness's pipe"),
    ("exits early, with sys.exit(0)", "import sys\nsys.exit(0)\n" + WRONG, None, "exits (status 0)"),
    ("exits early, in its function", "import os\ndef sort_it(xs):\n    os._exit(0)\n", None, "exits (status 0)"),
    ("writes the finished pipe, exits early", PIPE + "os._exit(0)\n", None, "exits (status 0)"),
    ("replaces os._exit to say finished", "import os\nexit = os._exit\ndef fake(code):\n"
     + "".join("    " + line + "\n" for line in PIPE.splitlines()) + "    exit(0)\nos._exit = fake\n" + WRONG, None,
     "replaces os._exit"),
    ("returns an object equal to everything", "class Any:\n    def __eq__(self, other):\n        return True\n"
     "def sort_it(xs):\n    return Any()\n", None, "says it equals anything"),
    ("returns a list equal to everything", "class L(list):\n    def __eq__(self, other):\n        return True\n"
     "def sort_it(xs):\n    return L(xs)\n", None, "says it equals anything"),
    ("monkeypatches builtins", "import builtins\nbuiltins.len = lambda x: 3\ndef sort_it(xs):\n    return []\n",
     "assert len(sort_it([3, 1, 2])) == 3\n", "replaces builtins.len"),
    ("patches an assert helper", "import math\nmath.isclose = lambda *a, **k: True\ndef root(x):\n    return 0\n",
     "assert math.isclose(root(2), 1.41421, rel_tol=1e-4)\n", "puts its own function in math.isclose"),
    ("patches unittest's assertEqual", "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
     + WRONG, "import unittest\nunittest.TestCase().assertEqual(sort_it([2, 1]), [1, 2])\n", "assertEqual"),
    ("wraps the tests in a dangling decorator", WRONG + "@(lambda f: lambda *a, **k: None)\n", None,
     "compiles only with the tests after it"),
    ("jumps over the tests' lines with a trace function",
     "import sys\ndef skip(frame, event, arg):\n    if event == 'line' and frame.f_code.co_name == 'check':\n"
     "        try:\n            frame.f_lineno = frame.f_lineno + 1\n        except ValueError:\n            pass\n"
     "    return skip\nsys.settrace(skip)\n" + WRONG, None, "sets a trace"),
]


@pytest.mark.parametrize("code, tests, seen", [t[1:] for t in TRICKS], ids=[t[0] for t in TRICKS])
def test_a_trick_does_not_pass_and_is_flagged(sandbox, host, code, tests, seen):
    outcome = sandbox.run(Program(code, tests or TESTS, entry_point="sort_it"))
    assert not outcome.passed, outcome
    assert any(seen in t for t in outcome.tamper), outcome
    assert outcome.reason.startswith(TAMPERED) and seen in outcome.reason


def test_the_tests_run_where_the_program_cannot_reach(sandbox, host):
    """The control of the tricks: the right solution passes, the wrong one fails, untouched; a helper of the
    prompt's that the tests call is the prompt's, whatever the candidate defines under its name."""
    assert sandbox.run(Program(GOOD, TESTS, entry_point="sort_it")).passed
    assert sandbox.run(Program(WRONG, TESTS, entry_point="sort_it")) == Outcome("failed", "AssertionError")
    prefix = ("def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n\n"
              "def find_zero(xs):\n    \"\"\"x with poly(xs, x) == 0.\"\"\"\n")
    tests = "def check(candidate):\n    assert abs(poly([1, 2], candidate([1, 2]))) < 1e-9\n\ncheck(find_zero)\n"
    honest = sandbox.run(Program("def find_zero(xs):\n    return -xs[0] / xs[1]\n", tests, prefix, "find_zero"))
    forged = sandbox.run(Program("def poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 7.0\n", tests,
                                 prefix, "find_zero"))
    assert honest.passed and not forged.passed
    # an object of the candidate's never decides a comparison with the tests' values: an int subclass equal to 3
    # is not 3 here, but two of its own objects compare by its own __eq__
    assert not sandbox.run(Program("class I(int):\n    pass\ndef f():\n    return I(3)\n", "assert f() == 3\n")).passed
    assert sandbox.run(Program("class P:\n    def __init__(self, x):\n        self.x = x\n"
                               "    def __eq__(self, o):\n        return self.x == o.x\n",
                               "assert P(1) == P(1) and P(1) != P(2)\n")).passed


# programs whose tests use what a test can: all must pass across the harness's pipe
HONEST = [
    ("a completion of the prompt's stub", Program("    return a + b\n", "assert add(2, 3) == 5\n",
                                                  'def add(a, b):\n    """Add."""\n', "add")),
    ("a callback and a key function", Program("def apply(f, x, key=None):\n    return sorted(f(x), key=key)\n",
                                              "assert apply(lambda v: [v, 1], 3, key=lambda v: -v) == [3, 1]\n"
                                              "assert apply(list, 'ba', key=str.upper) == ['a', 'b']\n")),
    ("a class and its methods", Program("class Stack:\n    def __init__(self):\n        self.items = []\n"
                                        "    def push(self, x):\n        self.items.append(x)\n"
                                        "    def pop(self):\n        return self.items.pop()\n"
                                        "    def __len__(self):\n        return len(self.items)\n"
                                        "    def __contains__(self, x):\n        return x in self.items\n",
                                        "s = Stack()\ns.push(1)\ns.push(2)\nassert s.pop() == 2 and len(s) == 1\n"
                                        "assert 1 in s and 5 not in s and isinstance(s, Stack) and s.items == [1]\n")),
    ("exceptions, the candidate's own too", Program(
        "class Bad(ValueError):\n    pass\ndef f(x):\n    if x < 0:\n        raise Bad('negative')\n    return {}[x]\n",
        "try:\n    f(-1)\nexcept Bad as e:\n    assert str(e) == 'negative' and isinstance(e, ValueError)\n"
        "else:\n    assert False\ntry:\n    f(1)\nexcept KeyError as e:\n    assert e.args == (1,)\n")),
    ("generators and higher-order functions", Program(
        "def gen(n):\n    yield from range(n)\ndef adder(n):\n    return lambda x: x + n\n",
        "assert list(gen(3)) == [0, 1, 2] and sum(gen(4)) == 6 and adder(2)(3) == 5\n")),
    ("values of every plain kind", Program(
        "import collections, datetime, fractions\nP = collections.namedtuple('P', 'x y')\n"
        "def f():\n    return [{1: (2.5, None, b'x', {3}, frozenset(), 1 + 2j, 2 ** 100)}, 'é', bytearray(b'a'),\n"
        "            float('inf'), collections.Counter('aab'), collections.deque([1]), fractions.Fraction(1, 3),\n"
        "            datetime.date(2020, 1, 2), P(1, 2)]\n",
        "import collections, datetime, fractions, math\nv = f()\n"
        "assert v[:4] == [{1: (2.5, None, b'x', {3}, frozenset(), 1 + 2j, 2 ** 100)}, 'é', bytearray(b'a'), math.inf]\n"
        "assert v[4] == {'a': 2, 'b': 1} and list(v[5]) == [1] and v[6] == fractions.Fraction(1, 3)\n"
        "assert v[7] == datetime.date(2020, 1, 2) and v[8] == (1, 2) and v[8].y == 2\n")),
    ("lists changed in place", Program("def fill(xs, d):\n    xs.sort()\n    d['k'] = 1\n",
                                       "xs, d = [2, 1], {}\nfill(xs, d=d)\nassert xs == [1, 2] and d == {'k': 1}\n")),
    ("the candidate's imports and globals", Program("import math\nN = 10\ndef f(x):\n    return math.sqrt(x)\n",
                                                    "assert N == 10 and math.isclose(f(2), 2 ** 0.5)\n")),
]


@pytest.mark.parametrize("program", [h[1] for h in HONEST], ids=[h[0] for h in HONEST])
def test_honest_programs_pass_across_the_pipe(sandbox, host, program):
    outcome = sandbox.run(program)
    assert outcome == Outcome("passed"), outcome


def test_pass_at_k_fails_a_tampering_sample_and_says_why(tmp_path, sandbox):
    """The tamper reason of each sample in sample_scores.parquet, and their count in the report."""
    import pandas as pd

    from evalkit.api import score_file
    from evalkit.report import write_report

    from conftest import write_jsonl

    rows = [{"prompt_id": "s", "prompt": "sort", "tests": TESTS, "entry_point": "sort_it", "text": GOOD},
            {"prompt_id": "s", "text": TRICKS[5][1]},  # an object equal to everything
            {"prompt_id": "s", "text": "import sys\nsys.exit(0)\n"}]
    run = score_file(write_jsonl(tmp_path / "g.jsonl", rows), ["pass_at_k[k=1]", "pass_at_k[k=2]"], tmp_path / "o",
                     progress=False)
    per = run.sample_scores[run.sample_scores["metric"] == "pass_at_1[timeout=3]"].sort_values("sample_index")
    assert per["value"].tolist() == [1.0, 0.0, 0.0]
    reasons = per["reason"].tolist()
    assert pd.isna(reasons[0]) and reasons[1].startswith(TAMPERED) and "equals anything" in reasons[1]
    assert reasons[2].startswith(TAMPERED) and "exits (status 0)" in reasons[2]
    html = write_report([run.path], tmp_path / "r.html").read_text()
    assert "2 samples whose program tampers with the tests&#39; harness" in html
