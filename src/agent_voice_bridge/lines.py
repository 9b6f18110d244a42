"""A server's lines: which checked chain each number called gets.

Built whole from a :class:`~agent_voice_bridge.configuration.ServerSetup` (every chain checked before
any serves) and never changed after: a reload builds a new :class:`Lines` and swaps it in, so a call
that looked up its line keeps a consistent chain whatever happens next.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from agent_voice_bridge.configuration import LineFile, ServerSetup, load_setup
from agent_voice_bridge.phone_numbers import e164
from agent_voice_bridge.pipelines.chain import Chain, build_chain
from agent_voice_bridge.pipelines.config import BridgeConfig, LineStorage, overlay
from agent_voice_bridge.pipelines.errors import ConfigError
from agent_voice_bridge.security.policy import CallerPolicy


@dataclass(frozen=True)
class Line:
    """One line: a name (its pipeline file's, or its key's), the numbers that reach it, its chain, and the
    rules for its calls (the server's ``security``/``storage`` with the line's own keys over them)."""

    name: str
    numbers: tuple[str, ...]
    default: bool
    chain: Chain
    policy: CallerPolicy = field(default_factory=CallerPolicy)
    """Who may call it, how often, for how long (the gate applies it at ``/incoming``, the session its time limit)."""
    storage: LineStorage = field(default_factory=LineStorage)
    """Whether its calls are recorded, and where."""

    @classmethod
    def of(cls, file: LineFile, chain: Chain, server: BridgeConfig) -> Line:
        """The line ``file`` declares, running ``chain``, under ``server``'s sections and its own keys over them."""
        return cls(file.name, file.numbers, file.default, chain,
                   CallerPolicy.of(server.security, file.security, file.name),
                   overlay(server.storage, file.storage, LineStorage))

    def reached_by(self) -> str:
        """Its numbers for the banner and /healthz: ``+15550100, +15550102 (default)``."""
        return ", ".join(self.numbers + (("default",) if self.default else ())) or "-"


class Lines:
    """The lines of one configuration, looked up by the number called (or placed from) or by name."""

    def __init__(self, lines: list[Line], digest: str = "") -> None:
        if not lines:
            raise ValueError("a server needs at least one line")
        self._lines = {line.name: line for line in lines}
        self._numbers = {number: line for line in lines for number in line.numbers}
        self._default = next((line for line in lines if line.default), None)
        self.digest = digest

    @classmethod
    def single(cls, chain: Chain, config: BridgeConfig | None = None) -> Lines:
        """One chain for every number, under ``config``'s security and storage: a server run from one pipeline file."""
        config = config or BridgeConfig()
        return cls([Line("default", (), True, chain, CallerPolicy.of(config.security),
                         overlay(config.storage, None, LineStorage))])

    def __iter__(self) -> Iterator[Line]:
        return iter(self._lines.values())

    def __len__(self) -> int:
        return len(self._lines)

    def for_number(self, number: str) -> Line | None:
        """The line ``number`` reaches (any spelling of it), else the default line, else None."""
        return self._numbers.get(e164(number) or number, self._default)

    def named(self, name: str) -> Line | None:
        return self._lines.get(name)

    @property
    def first(self) -> Line:
        """The default line, else the first listed: what the softphone calls and /healthz shows as "pipeline"."""
        return self._default or next(iter(self._lines.values()))


def load_lines(path: str | None) -> tuple[ServerSetup, Lines]:
    """Load the file given (and every pipeline file it names) and check every chain; raises ConfigError
    with the problems of every file at once: what ``check``, ``serve`` and a reload run."""
    setup = load_setup(path, keep_going=True)
    return setup, build_lines(setup)


def build_lines(setup: ServerSetup) -> Lines:
    """Every line's chain, checked; raises ConfigError with the problems of every file at once."""
    problems: list[str] = list(setup.problems)
    lines: list[Line] = []
    for file in setup.lines:
        try:
            lines.append(Line.of(file, build_chain(file.loaded), setup.config))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return Lines(lines, setup.digest())
