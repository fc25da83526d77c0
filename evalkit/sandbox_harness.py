"""What runs inside the code sandbox (:mod:`evalkit.sandbox`): two processes, so that the verdict comes from where
the candidate's code cannot reach.

Started as ``python -I -S -c WRAPPER CPU MEMORY PROCESSES FILES FILE_SIZE SITE_DIRS...`` with a token and a job
(JSON: ``prefix``, ``code``, ``tests``, ``entry_point``) on stdin:

- the *supervisor* (the first process) puts itself out of reach (``PR_SET_DUMPABLE`` 0: no process of its user
  may open its ``/proc/<pid>/mem``, ``environ``, ``maps`` or ``fd``, nor trace it; the program has no capability),
  sets the limits and forks the *candidate* process before it reads stdin, so that neither the token nor the tests
  are ever in that process's memory;
- the candidate process runs the prefix and the code as the module ``__candidate__``, says which names it
  defines, then serves the supervisor's requests on a pair of pipes (call this function of yours, get this
  attribute, compare these two of your objects...);
- the supervisor never runs the candidate's code: it runs the prompt's prefix and the tests itself, with the
  candidate's names bound to plain data (rebuilt from JSON, so that Python's own types compare it) or to proxies
  (:class:`Remote`) whose every use is a request; a tests' value never reaches an object of the candidate's in a
  comparison. Once the tests ended, it kills every other process and writes the token and the verdict (JSON) as
  the last line of the output.
"""

from __future__ import annotations

import os
import sys

MAX_FRAME = 256 << 20  # bytes of one message: more is a broken protocol
MAX_DEPTH = 200  # nesting of one value
BIG_GLOBAL = 1 << 20  # bytes: a larger module-level value goes as a proxy, not by value
TEXT = 300  # characters of a message kept in a verdict
EXACT = 1 << 53  # integers below this go as JSON numbers, larger ones as hexadecimal text
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36

# Standard-library modules that the supervisor imports itself (for the tests) where the candidate's module binds them
# under their own name (``import math``): what the tests call is then Python's, not the candidate's.
# Any other module of the candidate's reaches the tests as a proxy.
OWN_MODULES = frozenset({"abc", "array", "bisect", "calendar", "cmath", "collections", "copy", "dataclasses",
                         "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "itertools",
                         "json", "math", "numbers", "operator", "re", "statistics", "string", "struct",
                         "textwrap", "typing", "unicodedata"})
# classes that go by name (the receiver uses its own): the builtins' and those of these values
VALUE_CLASSES = frozenset({("collections", "OrderedDict"), ("collections", "defaultdict"),
                           ("collections", "Counter"), ("collections", "deque"), ("fractions", "Fraction"),
                           ("decimal", "Decimal"), ("datetime", "date"), ("datetime", "datetime"),
                           ("datetime", "time"), ("datetime", "timedelta"), ("datetime", "timezone")})
MUTABLE = (list, dict, set, bytearray)  # arguments whose changes by a call are copied back to the caller's
# what the candidate's process may ask of the objects the tests passed it (a key function, a callback)
FOR_THE_CANDIDATE = frozenset({"call", "repr", "str", "bool", "hash", "eq", "ne"})
PROTOCOL = "writes to the harness's pipe (a message the harness did not ask for or cannot read)"
EQUAL_TO_ANYTHING = "returns an object that says it equals anything (its __eq__)"
EXITS = "exits (status 0) before its tests end"
SWALLOWS = "its code compiles only with the tests after it (it would swallow them: a dangling decorator...)"


def _codec():
    """JSON's own C scanner and encoder, without the json package (which imports re: a fifth of a start-up)."""
    try:
        import _json
    except ImportError:  # not CPython
        import json

        return (lambda value: json.dumps(value, separators=(",", ":"))), json.loads

    class Context:
        strict, object_hook, object_pairs_hook, parse_float, parse_int = True, None, None, float, int
        parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__

    def refuse(value):
        raise TypeError(f"{type(value).__name__} is not JSON")

    scan = _json.make_scanner(Context)
    encode = _json.make_encoder(None, refuse, _json.encode_basestring_ascii, None, ":", ",", False, False, True)

    def loads(text):
        text = text.decode("ascii") if isinstance(text, bytes) else text
        try:
            value, end = scan(text, 0)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text):
            raise ValueError("more than one JSON value")
        return value

    return (lambda value: "".join(encode(value, 0))), loads


dumps, loads = _codec()


class Stop(BaseException):
    """The other process cannot be reached or trusted any more (sticky: :attr:`Peer.broken`)."""


_PEER: Peer | None = None  # the one peer of this process


class Peer:
    """One end of the pipes between the candidate's process and the supervisor (which runs the tests): values
    cross as JSON, by value when they are plain data, else by reference (the receiver gets a :class:`Remote`)."""

    def __init__(self, read_fd: int, write_fd: int, serves_all: bool):
        global _PEER
        _PEER = self
        self.r, self.w = read_fd, write_fd
        self.serves_all = serves_all  # the candidate's process: any request; the supervisor: FOR_THE_CANDIDATE
        self.pid = os.getpid()
        self.mine: dict[int, object] = {}  # what this process sent by reference, by id
        self.my_ids: dict[int, int] = {}  # id(object) -> its id in ``mine``
        self.theirs: dict[int, Remote] = {}  # proxies of the other process's objects, by id
        self.classes: dict[int, type] = {}  # local stand-ins for the other process's exception classes
        self.broken: str | None = None
        self.ended = False  # the other process's end closed (it exited)
        self.tamper: list[str] = []
        self.probed: set[tuple[int, str]] = set()

    # ------------------------------------------------------------------ frames

    def fail(self, why: str, *, ended: bool = False, tamper: str | None = None) -> Stop:
        if self.broken is None:
            self.broken, self.ended = why, ended
        if tamper:
            self.flag(tamper)
        return Stop(self.broken)

    def flag(self, what: str) -> None:
        what = " ".join(str(what).split())[:200]
        if what and what not in self.tamper and len(self.tamper) < 10:
            self.tamper.append(what)

    def send(self, message) -> None:
        data = dumps(message).encode()
        if len(data) > MAX_FRAME:
            raise ValueError(f"a value of {len(data) >> 20} MiB is more than crosses the sandbox's pipe")
        view = memoryview(len(data).to_bytes(8, "big") + data)
        try:
            while view:
                view = view[os.write(self.w, view):]
        except OSError as e:
            raise self.fail(f"the candidate's process ended ({e.strerror})", ended=True) from None

    def receive(self) -> list:
        n = int.from_bytes(self._read(8), "big")
        if n > MAX_FRAME:
            raise self.fail("sent a message larger than the harness reads", tamper=PROTOCOL)
        body = self._read(n)
        try:
            message = loads(body)
        except Exception:  # not JSON (ValueError), too deep (RecursionError), or worse
            raise self.fail("sent what the harness cannot read", tamper=PROTOCOL) from None
        if type(message) is not list or not message or type(message[0]) is not str:
            raise self.fail("sent what the harness cannot read", tamper=PROTOCOL)
        return message

    def _read(self, n: int) -> bytes:
        got = bytearray()
        while len(got) < n:
            try:
                chunk = os.read(self.r, min(n - len(got), 1 << 20))
            except OSError as e:
                raise self.fail(f"the candidate's process ended ({e.strerror})", ended=True) from None
            if not chunk:
                raise self.fail("the candidate's process ended", ended=True)
            got += chunk
        return bytes(got)

    # ------------------------------------------------------------------ requests

    def exchange(self, message: list) -> list:
        """Send a request; serve the other process's requests until its reply, which is returned ("ok") or raised."""
        if self.broken:
            raise Stop(self.broken)
        self.send(message)
        while True:
            reply = self.receive()
            if reply[0] == "do":
                self.serve(reply)
            elif reply[0] == "ok" and len(reply) == 3:
                return reply
            elif reply[0] == "raised" and len(reply) == 2:
                raise self.received_exception(reply[1])
            else:
                raise self.fail("sent a reply to no request", tamper=PROTOCOL)

    def request(self, op: str, operands: list):
        reply = self.exchange(["do", op, [self.encode(x) for x in operands]])
        return self.decoded(reply[1])

    def call(self, f, args: tuple, kwargs: dict):
        """``f(*args, **kwargs)`` in the other process; what it changed in a list, dict or set argument is copied
        back into the caller's."""
        reply = self.exchange(["do", "call", [self.encode(f), self.encode(list(args)), self.encode(dict(kwargs))]])
        result = self.decoded(reply[1])
        try:
            for key, value in reply[2]:
                original = args[key] if type(key) is int else kwargs[key]
                new = self.decode(value)
                if type(new) is not type(original) or type(original) not in MUTABLE:
                    raise TypeError("not the argument's type")
                if type(original) is dict:
                    original.clear()
                    original.update(new)
                elif type(original) is set:
                    original.clear()
                    original.update(new)
                else:
                    original[:] = new
        except Stop:
            raise
        except Exception:
            raise self.fail("sent back arguments that were not sent", tamper=PROTOCOL) from None
        return result

    def serve(self, message: list) -> None:
        """Answer one request of the other process's (the candidate's process: any; the supervisor: FOR_THE_CANDIDATE
        on what the tests sent it)."""
        try:
            _, op, raw = message
            if type(op) is not str or type(raw) is not list:
                raise TypeError(op)
            if not self.serves_all and (op not in FOR_THE_CANDIDATE or not raw or type(raw[0]) is not list
                                        or raw[0][:1] != ["y"]):
                raise self.fail(f"asked the harness for {str(op)[:40]!r}", tamper=PROTOCOL)
            operands = [self.decode(x) for x in raw]
        except Stop:
            raise
        except Exception:
            raise self.fail("sent a request the harness cannot read", tamper=PROTOCOL) from None
        try:
            back = []
            if op == "finish":
                result = watch.findings() if watch else []
            elif op == "call":
                f, args, kwargs = operands
                result = f(*args, **kwargs)
                back = [[k, self.encode(v)] for k, v in [*enumerate(args), *kwargs.items()] if type(v) in MUTABLE]
            else:
                result = OPS[op](*operands)
            reply = ["ok", self.encode(result), back]
            self.leave_if_forked()
            self.send(reply)
        except Stop:
            raise
        except BaseException as e:
            self.leave_if_forked()
            self.send_raised(e)

    def send_raised(self, e: BaseException) -> None:
        """Tell the other process that ``e`` was raised (by its text alone where its arguments are too large)."""
        raised = self.exception(e)
        try:
            self.send(["raised", raised])
        except ValueError:
            self.send(["raised", [raised[0], None, ["l", [raised[3]]], raised[3]]])

    def leave_if_forked(self) -> None:
        """A child that the candidate's code forked, come back into the harness: it ends without a word."""
        if os.getpid() != self.pid:
            os._exit(0)

    # ------------------------------------------------------------------ values

    def export(self, obj) -> int:
        key = id(obj)
        if key not in self.my_ids:
            self.my_ids[key] = len(self.mine)
            self.mine[len(self.mine)] = obj
        return self.my_ids[key]

    def encode(self, v, depth: int = 0):
        t = type(v)
        if t is str or t is bool or t is float or v is None:
            return v
        if t is int:
            return v if -EXACT < v < EXACT else ["i", format(v, "x")]
        if depth >= MAX_DEPTH:
            raise ValueError("a value nested too deep (or in a cycle) to cross the sandbox's pipe")
        d = depth + 1
        if t is list or t is tuple or t is set or t is frozenset:
            return [_TAGS[t], [self.encode(x, d) for x in v]]
        if t is dict:
            return ["d", [[self.encode(k, d), self.encode(x, d)] for k, x in v.items()]]
        if t is bytes or t is bytearray:
            return [_TAGS[t], v.hex()]
        if t is complex:
            return ["c", v.real, v.imag]
        if t is range:
            return ["r", self.encode(v.start), self.encode(v.stop), self.encode(v.step)]
        if t is slice:
            return ["sl", self.encode(v.start, d), self.encode(v.stop, d), self.encode(v.step, d)]
        if v is Ellipsis:
            return ["e"]
        if t is Remote:
            return ["y", object.__getattribute__(v, "_evalkit_id")]
        special = _encode_special(self, v, t, d)
        if special is not None:
            return special
        if isinstance(v, type):
            if _named_class(v):
                return ["k", v.__module__, v.__qualname__]
            if issubclass(v, BaseException):
                return ["xk", self.export(v), v.__qualname__, _builtin_base(v).__name__]
        if t is type(sys) and v.__name__ in OWN_MODULES:
            return ["m", v.__name__]
        if isinstance(v, BaseException):
            return ["x", self.exception(v)]
        return ["o", self.export(v)]

    def decode(self, x, depth: int = 0):
        """A value the other process sent (raises on anything malformed)."""
        if x is None or type(x) in (str, bool, int, float):
            return x
        if type(x) is not list or not x or type(x[0]) is not str or depth >= MAX_DEPTH:
            raise ValueError("not a value")
        tag, args, d = x[0], x[1:], depth + 1
        if tag in ("l", "t", "s", "fs"):
            (items,) = args
            return _KINDS[tag](self.decode(i, d) for i in _list(items))
        if tag == "d":
            (pairs,) = args
            return {self.decode(k, d): self.decode(v, d) for k, v in _pairs(pairs)}
        if tag == "i":
            return int(_str(args[0]), 16)
        if tag in ("b", "ba"):
            return _KINDS[tag].fromhex(_str(args[0]))
        if tag == "c":
            real, imag = args
            if type(real) not in (int, float) or type(imag) not in (int, float):
                raise ValueError("not a complex number")
            return complex(real, imag)
        if tag == "r":
            return range(*(_int(self.decode(a, d)) for a in args))
        if tag == "sl":
            return slice(*(self.decode(a, d) for a in args))
        if tag == "e":
            return Ellipsis
        if tag == "y":
            return self.mine[_int(args[0])]
        if tag == "o":
            (ident,) = args
            if _int(ident) not in self.theirs:
                self.theirs[ident] = Remote(ident)
            return self.theirs[ident]
        if tag == "k":
            return _class(*(_str(a) for a in args))
        if tag == "xk":
            return self.exception_class(*args)
        if tag == "m":
            return _module(_str(args[0]))
        if tag == "x":
            return self.received_exception(args[0], raising=False)
        return _decode_special(self, tag, args, d)

    def decoded(self, x):
        """A value of a reply: anything malformed breaks the protocol."""
        try:
            return self.decode(x)
        except Stop:
            raise
        except Exception:
            raise self.fail("sent a value the harness cannot read", tamper=PROTOCOL) from None

    def exception_class(self, ident, name, base) -> type:
        """A local class that stands for the other process's exception class ``ident``."""
        if _int(ident) not in self.classes:
            parent = _builtin_exception(base)
            short = _str(name).rpartition(".")[2]
            self.classes[ident] = type(short if short.isidentifier() else "CandidateError", (parent,),
                                       {"__module__": "__candidate__"})
        return self.classes[ident]

    def exception(self, e: BaseException) -> list:
        """An exception, to cross: its builtin base's name, its class (None for a builtin one), arguments, text."""
        cls = type(e)
        base = _builtin_base(cls)
        try:
            text = str(e)
        except BaseException:
            text = f"<{cls.__name__} that cannot be shown>"
        try:
            args = self.encode(list(e.args))
        except BaseException:
            args = ["l", [text]]
        return [base.__name__, None if cls is base else self.encode(cls), args, text[:4 * TEXT]]

    def received_exception(self, raw, raising: bool = True) -> BaseException:
        """The exception the other process raised (or sent), as this process's; SystemExit stops the tests."""
        try:
            base_name, cls, args, text = raw
            base = _builtin_exception(base_name)
            cls = base if cls is None else self.decode(cls)
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError("not an exception class")
            args = self.decode(args)
            if type(args) is not list or type(text) is not str:
                raise TypeError("not an exception")
        except Stop:
            raise
        except Exception:
            raise self.fail("sent an exception the harness cannot read", tamper=PROTOCOL) from None
        if issubclass(base, SystemExit) and raising and not self.serves_all:
            code = args[0] if args else None
            return self.fail(f"exited before its end (exit status {code!r})" if code not in (None, 0, False)
                             else "exited before its end (exit status 0)",
                             tamper=None if code not in (None, 0, False) else EXITS)
        try:
            return cls(*args)
        except Exception:
            return base(text)

    def probe(self, proxy: Remote, op: str = "eq", finding: str = EQUAL_TO_ANYTHING) -> None:
        """Flag an object of the candidate's that says it equals (or holds) a random string it cannot have seen."""
        key = (object.__getattribute__(proxy, "_evalkit_id"), op)
        if self.serves_all or key in self.probed:
            return
        self.probed.add(key)
        try:
            said = self.request(op, [proxy, os.urandom(12).hex()])
        except Exception:
            return
        if said is True:
            self.flag(finding)


_TAGS = {list: "l", tuple: "t", set: "s", frozenset: "fs", bytes: "b", bytearray: "ba"}
_KINDS = {"l": list, "t": tuple, "s": set, "fs": frozenset, "b": bytes, "ba": bytearray}


def _list(v) -> list:
    if type(v) is not list:
        raise ValueError("not a list")
    return v


def _pairs(v) -> list:
    if any(type(p) is not list or len(p) != 2 for p in _list(v)):
        raise ValueError("not pairs")
    return v


def _str(v) -> str:
    if type(v) is not str:
        raise ValueError("not text")
    return v


def _int(v) -> int:
    if type(v) is not int:
        raise ValueError("not an integer")
    return v


def _builtin_base(cls: type) -> type:
    import builtins

    return next(c for c in cls.__mro__ if issubclass(c, BaseException) and getattr(builtins, c.__name__, None) is c)


def _builtin_exception(name) -> type:
    import builtins

    cls = getattr(builtins, _str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise ValueError("not a builtin exception")
    return cls


def _named_class(cls: type) -> bool:
    """A class that goes by name: a builtin one, or one of :data:`VALUE_CLASSES` (the receiver uses its own)."""
    module, name = getattr(cls, "__module__", None), getattr(cls, "__qualname__", None)
    if module == "builtins" or (module, name) in VALUE_CLASSES:
        return getattr(sys.modules.get(module), str(name), None) is cls
    return False


def _class(module: str, name: str) -> type:
    if module != "builtins" and (module, name) not in VALUE_CLASSES:
        raise ValueError("not a class that goes by name")
    cls = getattr(__import__(module), name, None)
    if not isinstance(cls, type):
        raise ValueError("not a class")
    return cls


def _module(name: str):
    if name not in OWN_MODULES:
        raise ValueError("not a module that goes by name")
    return __import__(name)


def _encode_special(peer: Peer, v, t: type, d: int):
    """Values of the standard library's (and numpy's) that go by value: rebuilt by the receiver with its own classes."""
    module, name = getattr(t, "__module__", ""), getattr(t, "__qualname__", "")
    if (module, name) in VALUE_CLASSES and getattr(sys.modules.get(module), name, None) is t:
        pairs = [[peer.encode(k, d), peer.encode(x, d)] for k, x in v.items()] if isinstance(v, dict) else None
        if name in ("OrderedDict", "Counter"):
            return ["od" if name == "OrderedDict" else "C", pairs]
        if name == "defaultdict":
            return ["dd", peer.encode(v.default_factory, d), pairs]
        if name == "deque":
            return ["q", [peer.encode(x, d) for x in v], v.maxlen]
        if name == "Fraction":
            return ["F", peer.encode(v.numerator), peer.encode(v.denominator)]
        if name == "Decimal":
            return ["D", str(v)]
        return _encode_time(v, name)
    fields = getattr(t, "_fields", None) if t.__bases__ == (tuple,) else None
    if type(fields) is tuple and all(type(f) is str for f in fields):
        return ["nt", t.__name__, list(t._fields), [peer.encode(x, d) for x in v]]  # a namedtuple
    np = sys.modules.get("numpy")
    if np is not None and (t is np.ndarray or (isinstance(v, np.generic) and module == "numpy")) \
            and v.dtype.kind in "biufcmMSU":
        data = v.tobytes().hex()
        return ["nd", v.dtype.str, list(v.shape), data] if t is np.ndarray else ["ng", v.dtype.str, data]
    return None


def _encode_time(v, name: str):
    if name == "timedelta":
        return ["dt", name, [v.days, v.seconds, v.microseconds]]
    if name == "timezone":
        return ["dt", name, [v.utcoffset(None).total_seconds()]]
    if name == "date":
        return ["dt", name, [v.year, v.month, v.day]]
    tz = v.tzinfo
    if tz is not None and type(tz) is not type(sys.modules["datetime"].timezone.utc):
        return None  # a zone of another kind: by reference
    offset = None if tz is None else tz.utcoffset(None).total_seconds()
    clock = [v.hour, v.minute, v.second, v.microsecond, offset, v.fold]
    return ["dt", name, ([v.year, v.month, v.day] if name == "datetime" else []) + clock]


def _decode_special(peer: Peer, tag: str, args: list, d: int):
    if tag in ("od", "C"):
        import collections

        (pairs,) = args
        kind = collections.OrderedDict if tag == "od" else collections.Counter
        return kind({peer.decode(k, d): peer.decode(v, d) for k, v in _pairs(pairs)})
    if tag == "dd":
        import collections

        factory, pairs = args
        factory = peer.decode(factory, d)
        return collections.defaultdict(factory, {peer.decode(k, d): peer.decode(v, d) for k, v in _pairs(pairs)})
    if tag == "q":
        import collections

        items, maxlen = args
        return collections.deque((peer.decode(x, d) for x in _list(items)), None if maxlen is None else _int(maxlen))
    if tag == "F":
        import fractions

        return fractions.Fraction(_int(peer.decode(args[0])), _int(peer.decode(args[1])))
    if tag == "D":
        import decimal

        return decimal.Decimal(_str(args[0]))
    if tag == "nt":
        name, fields, items = args
        cls = _namedtuple(_str(name), tuple(_str(f) for f in _list(fields)))
        return cls(*(peer.decode(x, d) for x in _list(items)))
    if tag == "dt":
        return _decode_time(_str(args[0]), _list(args[1]))
    if tag in ("nd", "ng"):
        import numpy as np

        dtype = np.dtype(_str(args[0]))
        if dtype.hasobject or dtype.kind not in "biufcmMSU":
            raise ValueError("not a plain array")
        data = np.frombuffer(bytes.fromhex(_str(args[-1])), dtype=dtype)
        return data.reshape([_int(n) for n in _list(args[1])]).copy() if tag == "nd" else data[0]
    raise ValueError(f"no value is tagged {tag[:20]!r}")


_NAMEDTUPLES: dict[tuple, type] = {}


def _namedtuple(name: str, fields: tuple) -> type:
    if (name, fields) not in _NAMEDTUPLES:
        import collections

        _NAMEDTUPLES[name, fields] = collections.namedtuple(name, fields, rename=True)
    return _NAMEDTUPLES[name, fields]


def _decode_time(name: str, values: list):
    import datetime

    if not all(v is None or type(v) in (int, float) for v in values):
        raise ValueError("not a time")
    if name == "timedelta":
        return datetime.timedelta(*values)
    if name == "timezone":
        return datetime.timezone(datetime.timedelta(seconds=values[0]))
    if name == "date":
        return datetime.date(*values)
    *clock, offset, fold = values
    tz = None if offset is None else datetime.timezone(datetime.timedelta(seconds=offset))
    if name == "datetime":
        return datetime.datetime(*clock, tzinfo=tz, fold=fold)
    if name == "time":
        return datetime.time(*clock, tzinfo=tz, fold=fold)
    raise ValueError("not a time")


# ---------------------------------------------------------------------------- proxies


class Remote:
    """An object of the other process's: its every use is a request. Against a value of this process's it neither
    compares nor computes (``==`` is identity, ``<`` and ``+`` raise TypeError): an object of the candidate's never
    decides a comparison with what the tests expect, nor sees it."""

    __slots__ = ("_evalkit_id", "__weakref__")

    def __init__(self, ident: int):
        object.__setattr__(self, "_evalkit_id", ident)

    def _do(self, op: str, *operands):
        return _PEER.request(op, [self, *operands])

    def __getattr__(self, name):
        return self._do("getattr", name)

    def __setattr__(self, name, value):
        self._do("setattr", name, value)

    def __delattr__(self, name):
        self._do("delattr", name)

    def __call__(self, *args, **kwargs):
        return _PEER.call(self, args, kwargs)

    def __eq__(self, other):
        _PEER.probe(self)
        return self._do("eq", other) if type(other) is Remote else NotImplemented

    def __ne__(self, other):
        _PEER.probe(self)
        return self._do("ne", other) if type(other) is Remote else NotImplemented

    def __hash__(self):
        return self._do("hash")

    def __bool__(self):
        return self._do("bool")

    def __len__(self):
        return self._do("len")

    def __iter__(self):
        return self._do("iter")

    def __next__(self):
        return self._do("next")

    def __reversed__(self):
        return self._do("reversed")

    def __contains__(self, item):
        """By iteration here, where the object iterates: it does not see what is looked for."""
        try:
            items = iter(self)
        except TypeError:  # not iterable: it answers (one that says it holds a random string is flagged)
            _PEER.probe(self, "contains", "returns an object that says it holds anything (its __contains__)")
            return self._do("contains", item)
        return any(x is item or x == item for x in items)

    def __getitem__(self, key):
        return self._do("getitem", key)

    def __setitem__(self, key, value):
        self._do("setitem", key, value)

    def __delitem__(self, key):
        self._do("delitem", key)

    def __repr__(self):
        try:
            return self._do("repr")
        except Exception:
            return "<an object of the candidate's>"

    def __str__(self):
        return self._do("str")

    def __format__(self, spec):
        return self._do("format", spec)

    def __bytes__(self):
        return self._do("bytes")

    def __dir__(self):
        return self._do("dir")

    def __round__(self, *ndigits):
        return self._do("round", *ndigits)

    def __enter__(self):
        return self._do("enter")

    def __exit__(self, *exc):
        return self._do("exit", *exc)

    def __instancecheck__(self, instance):
        return self._do("isinstance_of", instance)

    def __subclasscheck__(self, cls):
        return self._do("issubclass_of", cls)

    def __copy__(self):
        return self._do("copy")

    def __deepcopy__(self, memo):
        return self._do("deepcopy")

    def __reduce_ex__(self, protocol):
        raise TypeError("an object of the candidate's process cannot be pickled")


def _unary(op: str):
    return lambda self: self._do(op)


def _binary(op: str):
    def method(self, other):
        return self._do(op, other) if type(other) is Remote else NotImplemented
    return method


UNARY = ("neg", "pos", "abs", "invert", "int", "float", "complex", "index", "trunc", "floor", "ceil")
BINARY = ("lt", "le", "gt", "ge", "add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "divmod", "pow",
          "lshift", "rshift", "and", "xor", "or")
for _op in UNARY:
    setattr(Remote, f"__{_op}__", _unary(_op))
for _op in BINARY:
    setattr(Remote, f"__{_op}__", _binary(_op))


def _ops() -> dict:
    """What the candidate's process does for the supervisor (the operations a :class:`Remote` asks for)."""
    import _operator as operator  # not operator, copy or signal: they import a tenth of a start-up
    import math

    ops = {"getattr": getattr, "setattr": setattr, "delattr": delattr, "getitem": operator.getitem,
           "setitem": operator.setitem, "delitem": operator.delitem, "len": len, "iter": iter, "next": next,
           "reversed": reversed, "bool": bool, "hash": hash, "str": str, "repr": repr, "format": format,
           "bytes": bytes, "dir": dir, "round": round, "enter": lambda o: o.__enter__(),
           "exit": lambda o, *exc: o.__exit__(*exc), "isinstance_of": lambda cls, o: isinstance(o, cls),
           "issubclass_of": lambda cls, c: issubclass(c, cls), "copy": lambda o: __import__("copy").copy(o),
           "deepcopy": lambda o: __import__("copy").deepcopy(o),
           "contains": operator.contains,
           "int": int, "float": float, "complex": complex, "index": operator.index, "trunc": math.trunc,
           "floor": math.floor, "ceil": math.ceil, "abs": abs, "divmod": divmod, "pow": pow}
    for op in (*UNARY, *BINARY, "eq", "ne"):
        if op not in ops:
            ops[op] = getattr(operator, op, None) or getattr(operator, op + "_")
    return ops


OPS = _ops()

# ---------------------------------------------------------------------------- tampering seen from inside


class Watch:
    """What the candidate's process can see of its program tampering with the harness: builtins or ``os``/``sys``
    functions replaced (then put back, for the harness's own sake), a trace function set, functions of its own put
    into other modules (an assert helper patched), another process's ``/proc/<pid>/mem`` opened. Best effort: it runs
    in the candidate's own interpreter, which the program owns; the verdict does not rest on it."""

    WATCHED = frozenset({"mem", "environ", "fd", "maps", "pagemap", "map_files", "root", "cwd", "task"})

    def __init__(self):
        import builtins

        self.seen: list[str] = []
        self.traced = False
        self.now = vars(builtins)
        self.builtins = dict(self.now)
        self.dicts = {m: vars(sys.modules[m]) for m in ("os", "sys", "__main__")}
        self.functions = {m: {k: v for k, v in d.items() if callable(v)} for m, d in self.dicts.items()}
        self.modules = dict(sys.modules)
        sys.addaudithook(self.audit)

    def audit(self, event: str, args: tuple) -> None:
        if event not in ("open", "os.listdir", "os.scandir") or not args or len(self.seen) > 10:
            return
        try:
            path = os.path.normpath(os.path.join(os.getcwd(), os.fsdecode(args[0])))
        except Exception:
            return
        parts = path.split("/")
        if len(parts) > 3 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != os.getpid() \
                and parts[3] in self.WATCHED:
            self.seen.append(f"opens {path} (another process's memory or files)")

    def put_back(self) -> list[str]:
        """Put back what the program replaced in builtins, ``os``, ``sys``, the harness and ``sys.modules``, saying
        what (without a builtin's name on the way: one of them may be the program's)."""
        now, before = self.now, self.builtins
        found = [f"replaces builtins.{k}" if k in before else f"adds builtins.{k}"
                 for k in [k for k in now if k not in before or now[k] is not before[k]]]
        found += [f"deletes builtins.{k}" for k in before if k not in now]
        for k in [k for k in now if k not in before]:
            del now[k]
        now.update(before)
        for module, functions in self.functions.items():
            current = self.dicts[module]
            for name, f in functions.items():
                if current.get(name) is not f:
                    found.append(f"replaces {'the harness' if module == '__main__' else module}.{name}")
                    current[name] = f
        for name, module in self.modules.items():
            if sys.modules.get(name, module) is not module:
                found.append(f"replaces sys.modules[{name!r}]")
                sys.modules[name] = module
        return found

    def findings(self) -> list[str]:
        found = self.put_back() + self.seen
        if self.traced or sys.gettrace() is not None or sys.getprofile() is not None:
            found.append("sets a trace or profile function (sys.settrace, sys.setprofile)")
        try:
            found += _planted(skip={"builtins", *self.functions})
        except Exception:  # a module of the program's that cannot be looked at: what was found so far
            pass
        return list(dict.fromkeys(found))[:10]


def _planted(skip: set[str]) -> list[str]:
    """Functions of the candidate's code found in other modules or their classes (a patched assert helper)."""
    found = []
    for name, module in list(sys.modules.items()):
        if name in skip or name == "__candidate__" or module is None:
            continue
        try:
            for attr, value in list(vars(module).items()):
                if _of_candidate(value):
                    found.append(f"puts its own function in {name}.{attr}")
                elif isinstance(value, type) and value.__module__ == name:
                    found += [f"puts its own function in {name}.{value.__qualname__}.{a}"
                              for a, v in list(vars(value).items()) if _of_candidate(v)]
        except Exception:  # not a module (a library's stand-in in sys.modules), or one that cannot be looked at
            continue
    return found


def _of_candidate(value) -> bool:
    f = getattr(value, "__func__", value) if type(value) in (staticmethod, classmethod) else value
    code = getattr(f, "__code__", None) if type(f).__name__ in ("function", "method") else None
    return code is not None and getattr(code, "co_filename", None) == "candidate.py"


watch: Watch | None = None

# ---------------------------------------------------------------------------- the two processes


def supervise(argv: list[str]) -> None:
    """The first process: see the module's docstring. Writes ``\\n TOKEN VERDICT-JSON \\n`` last and exits."""
    import _signal
    import resource

    cpu, memory, processes, files, file_size = (int(v) for v in argv[:5])
    sys.path.extend(argv[5:])
    if _prctl(PR_SET_DUMPABLE, 0) != 0 or _prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        os.write(2, b"\nthe harness could not put itself out of the program's reach (prctl)\n")
        os._exit(70)
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    for limit, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (memory, memory)),
                         (resource.RLIMIT_NPROC, (processes, processes)), (resource.RLIMIT_NOFILE, (files, files)),
                         (resource.RLIMIT_FSIZE, (file_size, file_size)), (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(limit, value)
    code_r, code_w = os.pipe()
    to_tests_r, to_tests_w = os.pipe()
    to_candidate_r, to_candidate_w = os.pipe()
    candidate = os.fork()  # before stdin is read: nothing secret is ever in the candidate's memory
    if candidate == 0:
        for fd in (code_w, to_tests_r, to_candidate_w):
            os.close(fd)
        run_candidate(code_r, to_tests_w, to_candidate_r)
    for fd in (code_r, to_tests_w, to_candidate_r):
        os.close(fd)
    data = _read_all(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    token, _, job = data.partition(b"\n")
    job = loads(job)
    prefix = job["prefix"] + ("\n" if job["prefix"] and not job["prefix"].endswith("\n") else "")
    try:
        os.write(code_w, (prefix + job["code"]).encode("utf-8", "surrogatepass"))
    except OSError:  # the candidate's process is gone already: its status says why
        pass
    os.close(code_w)
    verdict = run_tests(to_tests_r, to_candidate_w, job, candidate)
    _end_descendants(_signal.SIGKILL)
    os.write(1, b"\n" + token + b" " + dumps(verdict).encode() + b"\n")
    os._exit(0 if verdict["passed"] else 1)


def _prctl(option: int, value: int) -> int:
    """prctl(2) through _ctypes (the ctypes package costs a tenth of a start-up), else ctypes."""
    try:
        import _ctypes

        class Int(_ctypes._SimpleCData):
            _type_ = "i"

        class Function(_ctypes.CFuncPtr):
            _flags_, _restype_ = _ctypes.FUNCFLAG_CDECL, Int

        class Libc:
            _handle = _ctypes.dlopen(None, 0)

        prctl = Function(("prctl", Libc))
    except Exception:
        import ctypes

        prctl = ctypes.CDLL(None).prctl
    return prctl(option, value, 0, 0, 0)


def _end_descendants(kill: int) -> None:
    """Kill every process below this one and reap it: a subreaper, it is the parent of the program's orphans, so
    that what it kills leaves it more children until there is none (only ever its own descendants: never
    ``kill(-1)``, which outside a PID namespace of its own would reach every process of its user)."""
    me = os.getpid()
    while True:
        for pid in _children(me):
            try:
                os.kill(pid, kill)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:  # a kernel without it: every process whose parent this is
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
        return found


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def run_candidate(code_r: int, to_tests: int, from_tests: int) -> None:
    """The candidate's process: run the module, say what it defines, then serve the tests' requests."""
    import _signal
    import types

    global watch
    _prctl(PR_SET_DUMPABLE, 1)  # its own /proc/self as any process's (the supervisor's flag stays off)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd in range(3, 1024):
        if fd not in (code_r, to_tests, from_tests):
            try:
                os.close(fd)
            except OSError:
                pass
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    code = _read_all(code_r).decode("utf-8", "surrogatepass")
    os.close(code_r)
    peer = Peer(from_tests, to_tests, serves_all=True)
    watch = Watch()
    module = types.ModuleType("__candidate__")  # importable by name: dataclasses, pickle and typing look it up
    module.__file__ = "candidate.py"
    sys.modules["__candidate__"] = module
    sys.argv = ["candidate.py"]
    try:
        try:
            exec(compile(code, "candidate.py", "exec"), module.__dict__)
        finally:
            del code
        raised = None
    except BaseException as e:
        raised = e
    # here, in a frame that no trace function of the program's follows: stop any before the harness runs on
    watch.traced = sys.gettrace() is not None or sys.getprofile() is not None
    sys.settrace(None)
    sys.setprofile(None)
    peer.leave_if_forked()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (ValueError, OSError):  # the program closed it
            pass
    if raised is not None:
        try:
            try:
                peer.send(["failed", peer.exception(raised), watch.findings()])
            except (MemoryError, ValueError):  # too large to say: its text alone, once its memory is free
                module.__dict__.clear()
                text = peer.exception(raised)
                peer.send(["failed", [text[0], None, ["l", [text[3]]], text[3]], watch.findings()])
        except Stop:
            pass
        os._exit(1)
    try:
        findings = watch.findings()
        peer.send(["ready", _names(peer, module.__dict__), findings])
        while True:
            peer.serve(peer.receive())
            if sys.gettrace() is not None or sys.getprofile() is not None:
                watch.traced = True
                sys.settrace(None)
                sys.setprofile(None)
    except Stop:
        os._exit(0)


def _names(peer: Peer, namespace: dict) -> list:
    """The module's names and values: plain data by value (a large one by reference), the rest by reference; a
    module or a class goes by name only under its own name (``import math``, ``from collections import deque``)."""
    out = []
    for name, value in list(namespace.items()):
        if name.startswith("__") and name.endswith("__"):
            continue
        try:
            encoded = peer.encode(value)
            if type(encoded) is list and encoded[0] in ("m", "k") and encoded[-1].rpartition(".")[2] != name:
                encoded = ["o", peer.export(value)]
            elif type(encoded) is list and len(dumps(encoded)) > BIG_GLOBAL:
                encoded = ["o", peer.export(value)]
        except Exception:
            encoded = ["o", peer.export(value)]
        out.append([name, encoded])
    return out


def run_tests(from_candidate: int, to_candidate: int, job: dict, candidate: int) -> dict:
    """The prefix and the tests, here, with the candidate's names; the verdict, with what became of the candidate's
    process where it ended before the tests did."""
    peer = Peer(from_candidate, to_candidate, serves_all=False)
    verdict = {"passed": False, "detail": "", "tamper": [], "signal": None}
    try:
        _test(peer, job)
        verdict["passed"] = True
    except BaseException as e:
        if not peer.broken:
            verdict["detail"] = _describe(e)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    if peer.broken:
        verdict.update(passed=False, detail=peer.broken)
    if peer.ended:  # it closed its pipe: it exited (or closed it on purpose, and is waited for until killed)
        _, status = os.waitpid(candidate, 0)
        if os.WIFSIGNALED(status):
            verdict["signal"] = os.WTERMSIG(status)
        elif os.WEXITSTATUS(status) == 0:
            verdict["detail"] = "exited before its end (exit status 0)"
            peer.flag(EXITS)
        else:
            verdict["detail"] = f"exit status {os.WEXITSTATUS(status)}"
    verdict["tamper"] = peer.tamper
    if peer.tamper:
        verdict["passed"] = False
    return verdict


def _test(peer: Peer, job: dict) -> None:
    import types

    hello = peer.receive()
    if hello[0] not in ("ready", "failed") or len(hello) != 3 or type(hello[2]) is not list \
            or not all(type(f) is str for f in hello[2]):
        raise peer.fail("said something other than hello", tamper=PROTOCOL)
    for finding in hello[2]:
        peer.flag(finding)
    if hello[0] == "failed":  # its module raised
        raised = peer.received_exception(hello[1])
        if isinstance(raised, SyntaxError) and _swallows(job):
            peer.flag(SWALLOWS)
        raise raised
    if type(hello[1]) is not list:
        raise peer.fail("said something other than hello", tamper=PROTOCOL)
    names = {}
    try:
        for name, value in hello[1]:
            if type(value) is list and value[:1] in (["m"], ["k"]) and _str(value[-1]).rpartition(".")[2] != name:
                raise ValueError("a module or a class under another name")
            names[_str(name)] = peer.decode(value)
    except Stop:
        raise
    except Exception:
        raise peer.fail("said hello in a way the harness cannot read", tamper=PROTOCOL) from None
    module = types.ModuleType("__tests__")
    sys.modules["__tests__"] = module
    sys.argv = ["candidate.py"]
    namespace = module.__dict__
    own = _run_prefix(job["prefix"], job["entry_point"], namespace)
    for name, value in names.items():
        if name not in own:
            namespace[name] = value
    exec(compile(job["tests"], "tests.py", "exec"), namespace)
    if peer.broken:
        raise Stop(peer.broken)
    findings = peer.request("finish", [])
    if type(findings) is not list or not all(type(f) is str for f in findings):
        raise peer.fail("answered the end of the tests in a way the harness cannot read", tamper=PROTOCOL)
    for finding in findings:
        peer.flag(finding)


def _swallows(job: dict) -> bool:
    """Whether code that does not compile alone compiles with the tests after it, as it was once run: it ends in
    what would take the tests in (a dangling decorator that replaces ``check``, a string left open)."""
    if not job["tests"].strip():
        return False
    prefix = job["prefix"] + ("\n" if job["prefix"] and not job["prefix"].endswith("\n") else "")
    module = prefix + job["code"]
    for source, compiles in ((module, False), (f"{module}\n\n{job['tests']}", True)):
        try:
            compile(source, "candidate.py", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            if compiles:
                return False
        else:
            if not compiles:  # it compiles alone: its SyntaxError came from code it ran
                return False
    return True


def _run_prefix(prefix: str, entry_point: str, namespace: dict) -> set[str]:
    """Run the prompt's prefix here (it is the prompt's, not the candidate's) and return the names the tests keep
    from it: all it binds but the entry point and stubs (a function whose body is only a docstring, ``pass``,
    ``...`` or ``raise NotImplementedError``, or a class with one): the candidate provides those."""
    if not prefix.strip():
        return set()
    import ast

    before = set(namespace)
    try:
        tree = ast.parse(prefix)
        exec(compile(tree, "prefix.py", "exec"), namespace)
    except Exception:
        for name in set(namespace) - before:
            del namespace[name]
        return set()
    stubs = {node.name for node in tree.body if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                                                 and _stub(node.body))
             or (isinstance(node, ast.ClassDef) and any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                                                        and _stub(n.body) for n in node.body))}
    return set(namespace) - before - stubs - {entry_point}


def _stub(body: list) -> bool:
    import ast

    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                           and s.value.value is Ellipsis)
               or (isinstance(s, ast.Raise) and "NotImplementedError" in ast.unparse(s)) for s in body)


def _describe(e: BaseException) -> str:
    """``Type: message`` on one line."""
    try:
        text = " ".join(str(e).split())
    except BaseException:
        text = ""
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__)[:TEXT]


if __name__ == "__main__":
    supervise(sys.argv[1:])
