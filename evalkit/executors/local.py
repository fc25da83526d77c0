"""The local executor: the generator runs in this process, on this machine's device.

An executor checks what it can before anything loads (``check``), loads the generator
(``load``), takes the work units still to make and yields each unit's record as it finishes
(``run``), and frees what it holds (``close``); the pipeline alone writes the records. Another
executor (actors on a Ray cluster, :mod:`evalkit.executors.ray_cluster`) keeps this contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from evalkit.config import SweepConfig
from evalkit.generation import Abilities, check_model, load_backend
from evalkit.generation.base import Generator, SampleRecord, WorkUnit


class LocalExecutor:
    def __init__(self, config: SweepConfig):
        self.config = config
        self.generator: Generator | None = None
        self.abilities = Abilities()  # what the loaded generator can do besides generating (checked at load)
        self.notes: list[str] = []  # what the user should read once the model is loaded (none here)

    def check(self) -> tuple:
        """The model located and hashed, the device resolved: nothing loaded yet."""
        return check_model(self.config)

    def load(self, checked: tuple, status: Callable[[str], None] = lambda msg: None) -> Generator:
        self.generator = load_backend(self.config, status=status, checked=checked)
        self.abilities = Abilities.of(self.generator)
        return self.generator

    def run(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int, stop: tuple[str, ...],
            progress: Callable[[int, int | str], None]) -> Iterator[SampleRecord]:
        yield from self.generator.generate(units, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop,
                                           progress=progress)

    def record(self) -> dict:
        """Where generation ran, for the manifest."""
        return {"kind": "local"}

    def close(self) -> None:
        """Free the generator where it holds more than memory (vLLM's engine processes)."""
        close, self.generator, self.abilities = self.abilities.close, None, Abilities()
        if close is not None:
            close()
