"""The local executor: the generator runs in this process, on this machine's device.

An executor takes the work units still to make and yields each unit's record as it finishes;
the pipeline alone writes them. Another executor (actors on a cluster) keeps this contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from evalkit.generation.base import Generator, SampleRecord, WorkUnit


class LocalExecutor:
    def __init__(self, generator: Generator):
        self.generator = generator

    def run(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int, stop: tuple[str, ...],
            progress: Callable[[int, int], None]) -> Iterator[SampleRecord]:
        yield from self.generator.generate(units, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop,
                                           progress=progress)
