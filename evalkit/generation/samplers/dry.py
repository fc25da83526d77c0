"""DRY, don't repeat yourself (p-e-w's sampler), as llama.cpp computes it (``llama_sampler_dry``), batched over rows.

Each row reads its window: the last ``dry_penalty_last_n`` tokens of its prompt and output (-1: all of them).

1. Restart: the most recent sequence breaker in the window (a token whose text contains a breaker string, or a head
   token followed by the tokens of the rest of a breaker, see :func:`breaker_table`) limits a repetition to the
   tokens after it (``rep_limit``; the window's length when there is none). Among breakers that start at the same
   token the longest one counts.
2. Repeats: for each earlier position q of the window, n(q) is the length of the longest run of tokens ending at q
   that equals the run ending at the window's last token (both inside the window), at most ``rep_limit``.
3. The token that followed position q would extend that repetition; a token's length is the largest n(q) over the
   positions it followed.
4. A token whose length n is at least ``dry_allowed_length``, and that is no single-token breaker, has its logit
   lowered by ``dry_multiplier * dry_base ** (n - dry_allowed_length)``, the power in float64 and the penalty rounded
   to float32 as llama.cpp does; the exponent is capped at ``int(88.7228391 / log(dry_base))`` (float32) when
   ``dry_base > 1.000001``, so that the power stays inside float32's range.

Breaker strings become token sequences through the model's vocabulary (llama.cpp's
``get_overlapping_token_sequences``): :class:`Vocabulary` holds each token's text and the tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from evalkit.errors import EvalkitError
from evalkit.generation.samplers.base import Transform

MAX_BREAKER_BYTES = 40  # llama.cpp cuts a breaker string to 40 bytes
MAX_TAIL_TOKENS = 20  # and the tokens that follow a breaker's head token to 20
FLOAT_MAX_LOG = 88.7228391  # llama.cpp's log(FLT_MAX), for the exponent's cap
NO_CAP_BASE = 1.000001  # at or below this base the exponent is not capped


@dataclass(frozen=True)
class BreakerTable:
    """One list of breaker strings as tokens: ``single`` the tokens that are a breaker by themselves (their text
    contains a breaker string), ``tails`` for each sequence of tokens the head tokens it completes a breaker after
    (a head's text ends with the start of a breaker string, the tail tokenizes the rest)."""

    single: frozenset[int]
    tails: dict[tuple[int, ...], frozenset[int]]


def breaker_sequences(pieces: Sequence[bytes], encode: Callable[[bytes], list[int]],
                      breaker: str) -> dict[tuple[int, ...], set[int]]:
    """llama.cpp's ``get_overlapping_token_sequences`` for one breaker string: tail -> head tokens (the empty tail for
    tokens whose text contains the breaker). A token whose text ends, from some position on, with the breaker's
    first k bytes (and does not contain it) is a head; its tail is the tokenization of the breaker's other bytes, cut
    to :data:`MAX_TAIL_TOKENS`."""
    text = breaker.encode("utf-8")[:MAX_BREAKER_BYTES]
    first = text[:1]
    tails: dict[int, tuple[int, ...]] = {}  # the tail after the first k bytes, by k
    out: dict[tuple[int, ...], set[int]] = {}
    for token, piece in enumerate(pieces):
        if first not in piece:
            continue
        if text in piece:
            out.setdefault((), set()).add(token)
            continue
        pos = piece.find(first)
        while pos != -1:
            if text.startswith(piece[pos:]):
                k = len(piece) - pos
                if k not in tails:
                    tails[k] = tuple(encode(text[k:])[:MAX_TAIL_TOKENS])
                out.setdefault(tails[k], set()).add(token)
            pos = piece.find(first, pos + 1)
    return out


def breaker_table(pieces: Sequence[bytes], encode: Callable[[bytes], list[int]],
                  breakers: Sequence[str]) -> BreakerTable:
    """Every breaker string of one setting as tokens (:func:`breaker_sequences`, merged)."""
    merged: dict[tuple[int, ...], set[int]] = {}
    for breaker in breakers:
        for tail, heads in breaker_sequences(pieces, encode, breaker).items():
            merged.setdefault(tail, set()).update(heads)
    single = frozenset(merged.pop((), set()))
    return BreakerTable(single, {tail: frozenset(heads) for tail, heads in merged.items()})


class Vocabulary:
    """What DRY reads of the model's tokenizer, as llama.cpp reads its vocabulary: ``pieces()`` each token's text as
    bytes (special tokens written out), ``encode(text)`` the tokens of a text (no special tokens added). Both are read
    only when a setting sets DRY; each list of breakers becomes a :class:`BreakerTable` once, and each set of lists
    :class:`Breakers` on a device once."""

    def __init__(self, pieces: Callable[[], Sequence[bytes]], encode: Callable[[bytes], list[int]]):
        self._read_pieces, self.encode = pieces, encode
        self._pieces: Sequence[bytes] | None = None
        self._tables: dict[tuple[str, ...], BreakerTable] = {}
        self._on_device: dict[tuple, Breakers] = {}

    @classmethod
    def of_tokenizer(cls, tokenizer) -> Vocabulary:
        """A transformers tokenizer's: each token decoded alone (special tokens kept, spaces not cleaned up). A token
        that is part of a UTF-8 character decodes to U+FFFD: a breaker with non-ASCII characters may miss it where
        llama.cpp, which compares bytes, would not."""
        def pieces() -> list[bytes]:
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False)
            return [t.encode("utf-8") for t in texts]

        def encode(text: bytes) -> list[int]:
            return list(tokenizer.encode(text.decode("utf-8", errors="replace"), add_special_tokens=False))

        return cls(pieces, encode)

    def pieces(self) -> Sequence[bytes]:
        if self._pieces is None:
            self._pieces = self._read_pieces()
        return self._pieces

    def table(self, breakers: tuple[str, ...]) -> BreakerTable:
        if breakers not in self._tables:
            self._tables[breakers] = breaker_table(self.pieces(), self.encode, breakers)
        return self._tables[breakers]

    def on_device(self, lists: tuple[tuple[str, ...], ...], device) -> Breakers:
        key = (lists, str(device))
        if key not in self._on_device:
            self._on_device[key] = Breakers([self.table(b) for b in lists], device)
        return self._on_device[key]


class Breakers:
    """The breaker tables of a batch on the device, as masks over token ids with one more column (False) for ids
    outside them: ``single`` [tables, width + 1] (a token that is a breaker by itself); per (tail, table) a group:
    ``tails[g]`` its tokens, ``heads[g]`` [width + 1] the tokens it follows, ``group_table[g]`` its table."""

    def __init__(self, tables: list[BreakerTable], device):
        groups = [(tail, heads, i) for i, table in enumerate(tables) for tail, heads in table.tails.items()]
        width = 1 + max([0, *(t for table in tables for t in table.single), *(t for g in groups for t in g[1])])
        self.single = _masks([table.single for table in tables], width, device)
        self.heads = _masks([heads for _, heads, _ in groups], width, device)
        self.tails = [torch.tensor(tail, dtype=torch.long, device=device) for tail, _, _ in groups]
        self.group_table = [i for _, _, i in groups]


def _masks(sets: list, width: int, device) -> torch.Tensor:
    """[len(sets), width + 1] bool: row i True at the ids of sets[i] (the last column False)."""
    rows = [i for i, ids in enumerate(sets) for _ in ids]
    cols = [t for ids in sets for t in ids]
    out = torch.zeros((len(sets), width + 1), dtype=torch.bool)
    out[rows, cols] = True
    return out.to(device)


def _lookup(mask: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor | int) -> torch.Tensor:
    """``mask[rows, ids]`` (mask [n, width + 1] from :func:`_masks`; rows an int, or [len(ids)] broadcast over ids'
    columns): False where an id is outside the mask."""
    width = mask.shape[-1] - 1
    idx = torch.where((ids >= 0) & (ids < width), ids, torch.full_like(ids, width))
    return mask[rows][idx] if isinstance(rows, int) else mask[rows[:, None], idx]


def prepare(params, settings: list) -> None:
    """Each DRY row's breaker table (``params.dry_set``, an index into ``params.dry_breakers``), from the tokenizer's
    vocabulary (``params.vocabulary``, a :class:`Vocabulary`)."""
    universe = getattr(params, "universe", None) or settings  # the tables of every row that may join these
    lists = tuple(sorted({s.dry_sequence_breakers for s in universe if s.dry_multiplier > 0}))
    device = params.dry_multiplier.device
    index = {b: i for i, b in enumerate(lists)}
    sets = torch.tensor([index.get(s.dry_sequence_breakers, 0) for s in settings], dtype=torch.long, device=device)
    params.rowwise["dry_set"] = sets
    params.dry_set = sets
    params.dry_breakers = None
    if not lists:
        return
    vocabulary = getattr(params, "vocabulary", None)
    if vocabulary is None:
        raise EvalkitError("DRY needs the model's vocabulary to find its sequence breakers' tokens, and evalkit's "
                           "engine was given none")
    params.dry_breakers = vocabulary.on_device(lists, device)


def window_start(params) -> torch.Tensor:
    """[rows] the first position of each row's window in ``params.history`` (left-padded with -1)."""
    history = params.history
    length = history.shape[1]
    tokens = (history >= 0).sum(dim=1)
    last_n = params.dry_penalty_last_n
    n = torch.where(last_n < 0, tokens, torch.minimum(tokens, last_n))
    return length - n


def restart_limit(history: torch.Tensor, start: torch.Tensor, breakers: Breakers, sets: torch.Tensor) -> torch.Tensor:
    """[rows] rep_limit: the number of tokens after the most recent breaker of the window (the window's length when
    there is none). A breaker is found by its head token, the most recent first; of the breakers starting there
    (their tails all inside the window) the longest counts."""
    rows, length = history.shape
    pos = torch.arange(length, device=history.device)[None, :]
    in_window = pos >= start[:, None]
    best = torch.where(in_window & _lookup(breakers.single, history, sets), 0, -1)  # longest tail found at q
    for g, (tail, table) in enumerate(zip(breakers.tails, breakers.group_table)):
        n = tail.numel()
        if n >= length:
            continue
        heads = _lookup(breakers.heads, history[:, : length - n], g)
        hit = in_window[:, : length - n] & (sets == table)[:, None] & heads
        for offset in range(n):
            hit &= history[:, offset + 1: length - n + offset + 1] == tail[offset]
        best[:, : length - n] = torch.where(hit, best[:, : length - n].clamp(min=n), best[:, : length - n])
    last = torch.where(best >= 0, pos, -1).amax(dim=1)
    found_tail = best.gather(1, last.clamp(min=0)[:, None])[:, 0]
    return torch.where(last >= 0, length - 1 - last - found_tail, length - start)


def exponent_cap(base: torch.Tensor) -> torch.Tensor:
    """[rows] llama.cpp's cap on the exponent: int(88.7228391 / log(base)) in float32 where base > 1.000001, else 0
    (no cap)."""
    capped = base > torch.tensor(NO_CAP_BASE, dtype=torch.float32)
    safe = torch.where(capped, base, torch.full_like(base, 2.0))
    cap = (torch.tensor(FLOAT_MAX_LOG, dtype=torch.float32) / torch.log(safe)).long()
    return torch.where(capped, cap, torch.zeros_like(cap))


def length_cap(params, limit: torch.Tensor) -> torch.Tensor:
    """[rows] how far a repeat's length is worth measuring: rep_limit, and no longer than the length whose penalty
    is the largest (allowed + the exponent's cap; allowed when the base is 1: the penalty is then the multiplier)."""
    allowed = params.dry_allowed_length
    cap = exponent_cap(params.dry_base)
    enough = torch.where(cap > 0, allowed + cap, torch.where(params.dry_base == 1, allowed, limit))
    return torch.minimum(limit, enough)


def repeat_lengths(history: torch.Tensor, start: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """[rows, length] n(q) for each window position q but the last: how many tokens ending at q equal those ending at
    the last position, the earlier run inside the window, at most ``cap`` (0 outside the window). One step per
    token of the longest repeat, each over every row and position."""
    rows, length = history.shape
    pos = torch.arange(length, device=history.device)[None, :]
    alive = (pos >= start[:, None]) & (pos <= length - 2)
    n = torch.zeros((rows, length), dtype=torch.long, device=history.device)
    for t in range(length - 1):
        earlier = torch.nn.functional.pad(history[:, : length - t], (t, 0), value=-1)  # history[q - t] at q
        alive &= (t < cap[:, None]) & (pos - t >= start[:, None]) & (earlier == history[:, length - 1 - t, None])
        if not bool(alive.any()):
            break
        n += alive
    return n


def longest_repeat(history: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor, allowed: torch.Tensor,
                   vocab: int) -> torch.Tensor:
    """[rows, vocab] for each token, the longest repeat (n(q) >= allowed) that emitting it would extend: the largest
    n(q) over the window positions q it followed; -1 where there is none."""
    rows, length = history.shape
    following = history[:, 1:]
    n = lengths[:, :-1]
    pos = torch.arange(length - 1, device=history.device)[None, :]
    counted = (pos >= start[:, None]) & (n >= allowed[:, None]) & (following >= 0) & (following < vocab)
    idx = torch.where(counted, following, torch.full_like(following, vocab))
    out = torch.full((rows, vocab + 1), -1, dtype=torch.long, device=history.device)
    out.scatter_reduce_(1, idx, torch.where(counted, n, -1), reduce="amax")
    return out[:, :vocab]


def penalty(longest: torch.Tensor, rows: torch.Tensor, params) -> torch.Tensor:
    """multiplier * base ** (n - allowed) of each (row, repeat length n), the exponent capped, the power in float64,
    then float32."""
    exponent = longest - params.dry_allowed_length[rows]
    cap = exponent_cap(params.dry_base[rows])
    exponent = torch.where((cap > 0) & (exponent > cap), cap, exponent)
    return (params.dry_multiplier[rows].double() * params.dry_base[rows].double() ** exponent.double()).float()


def dry(out: torch.Tensor, params) -> torch.Tensor:
    """Each DRY row's logits lowered for the tokens that would extend a repetition (see the module's docstring)."""
    on = params.dry_multiplier > 0
    history = params.history
    if not bool(on.any()) or history.shape[1] < 2:
        return out
    start = window_start(params)
    limit = restart_limit(history, start, params.dry_breakers, params.dry_set)
    lengths = repeat_lengths(history, start, torch.where(on, length_cap(params, limit), 0))
    allowed = params.dry_allowed_length
    longest = longest_repeat(history, lengths, start, allowed, out.shape[-1])
    rows, tokens = ((longest >= allowed[:, None]) & on[:, None]).nonzero(as_tuple=True)
    breaker = _lookup(params.dry_breakers.single, tokens[:, None], params.dry_set[rows])[:, 0]
    rows, tokens = rows[~breaker], tokens[~breaker]  # a single-token breaker is never penalised
    return out.index_put((rows, tokens), out[rows, tokens] - penalty(longest[rows, tokens], rows, params))


TRANSFORMS = {
    "dry_multiplier": Transform(dry, torch.float32, lambda p, vocab: p.dry_multiplier > 0, needs_history=True,
                                prepare=prepare),
}
