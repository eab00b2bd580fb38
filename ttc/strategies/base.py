"""The Strategy contract and the registry that maps names to strategies.

A strategy takes a problem and a budget and spends the budget through ``ctx.backend``; it never decides how much
to spend (the controller does) and never touches the trace store (the API writes what ``ctx.recorder`` holds).
Options are pydantic models with ``extra="forbid"``, so a misspelt option is an error, not a silent default.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ttc.backends.base import Backend, draws_distinct
from ttc.budget import Meter
from ttc.errors import ConfigError
from ttc.strategies.synthesis import PATH_TEMPLATE, SYNTHESIS_TEMPLATE
from ttc.trace import TraceRecorder
from ttc.types import MIN_TEMPERATURE, Candidate, Problem, Sampling, is_number
from ttc.verifiers.base import OutcomeVerifier, ProcessVerifier

DEFAULT_PROMPT_TEMPLATE = (
    "Question: {question}\n"
    "Solve step by step and end with 'The answer is N.'\n"
    "Answer:\n"
)


TEMPERATURE = 0.8
"""The sampling strategies' default temperature."""

TOP_P = 0.95
"""The sampling strategies' default nucleus. Dropping the last 5% of probability mass removes tail tokens that
derail a long chain and keeps the choices a model is really unsure of. With the bundled mini models it lifts best
of 16 by the token PRM by 4 to 7.5 points and the vote by 1.4 to 2.5, on every draw measured; best of 16 by the checker
stays within its draw-to-draw spread (docs/mini_models.md)."""

DISTINCT = ("draw without replacement, so one call's samples are all different texts (fewer where the sampling "
            "distribution has fewer): a verifier then chooses among more candidates; the local engine only")


def check_distinct(distinct: bool, temperature: float) -> None:
    """Refuse ``distinct`` with greedy decoding, which has one text to draw; raised inside an options validator,
    so it reaches the caller as the options' ConfigError."""
    if distinct and temperature == 0:
        raise ValueError("distinct=True draws different samples and greedy decoding has one: set a temperature > 0, "
                         "or distinct=False")


class StrategyOptions(BaseModel):
    """Base of every strategy's options: immutable, unknown fields rejected, and values taken as their own type.

    Strict, because lenient coercion would read ``n=True`` as one sample and ``distinct="no"`` as False: a value
    of the wrong type is an error, as everywhere else in the API (an int is still a float). A NaN or infinite
    number is one too (``temperature=inf`` passed ``ge=0`` and failed in the sampler, its trace opened).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)  # NaN, inf: no setting

    @model_validator(mode="after")
    def _temperature_scales_logits(self) -> StrategyOptions:
        """Every sampled option set's temperature is 0 (greedy) or one logits can be divided by."""
        temperature = getattr(self, "temperature", None)
        if is_number(temperature) and 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature {temperature!r} is too small to scale logits by (below "
                             f"{MIN_TEMPERATURE:g} they overflow): use 0 for greedy decoding")
        return self


OptionsT = TypeVar("OptionsT", bound=StrategyOptions)


@dataclass
class Context:
    """What a strategy may use while it runs. ``rng`` is seeded: the same seed gives the same trace.

    ``verifier`` scores whole solutions; ``prm`` scores steps (tree searches need it). When only a PRM is
    configured, the API also sets ``verifier`` to the PRM aggregated over steps. ``draft`` is a smaller model with
    the same tokenizer, set only for strategies whose ``uses_draft`` is true (lookahead). ``synthesizer`` is the
    setup's synthesis model, set only for strategies whose ``uses_synthesizer`` is true (parallel thinking; without
    one the target synthesizes); ``synthesis_template`` and ``path_template`` are the prompt it reads
    (``ttc.strategies.synthesis``).
    """

    backend: Backend
    recorder: TraceRecorder
    rng: random.Random
    verifier: OutcomeVerifier | None = None
    prm: ProcessVerifier | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    step_delimiter: str = "\n"
    draft: Backend | None = None
    synthesizer: Backend | None = None
    synthesis_template: str = SYNTHESIS_TEMPLATE
    path_template: str = PATH_TEMPLATE
    about: str | None = None
    """The context the question is asked about, with its notes, where it has one: the prompt template holds it,
    the question alone does not."""

    def render(self, question: str) -> str:
        return self.prompt_template.format(question=question)

    def question_text(self, question: str) -> str:
        """The question as verifiers, answer checks and a synthesizer read it: after its context and notes, so that
        a PRM judges steps about what the model was shown, and an operand check finds the context's numbers."""
        return question if not self.about else f"{self.about}\n{question}"

    def next_seed(self) -> int:
        return self.rng.randrange(2**31)

    async def open_question(self, question: str) -> tuple[str, list[int], int]:
        """The question's prompt (text and token ids) and its node, the root of the question's tree."""
        text = self.render(question)
        prompt = await self.backend.tokenize(text, add_special_tokens=True)
        return text, prompt, self.recorder.add_node(parent=None, text=text, token_count=len(prompt))


@dataclass(frozen=True)
class StrategyResult:
    """What a strategy found. ``text`` and ``answer`` are those of the chosen candidate."""

    answer: str | None
    text: str
    score: float | None
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)


class Strategy(ABC, Generic[OptionsT]):
    """One test-time-compute algorithm. Subclasses set ``name`` and ``Options`` and implement ``run``."""

    name: ClassVar[str]
    Options: ClassVar[type[StrategyOptions]]
    uses_draft: ClassVar[bool] = False
    """Whether the strategy runs a draft model beside the target; only then is one loaded."""
    uses_synthesizer: ClassVar[bool] = False
    """Whether the strategy runs the setup's synthesis model beside the target; only then is one loaded."""

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    def check_setup(self, backend: Backend) -> None:
        """Refuse what this strategy cannot run with on ``backend`` (its options were checked when it was made):
        called before any question's trace opens, so a setup error fails once, not as one failed trace each.
        Here, samples drawn without replacement from a backend that says it cannot draw them; a strategy that
        checks more calls this too."""
        if getattr(self.options, "distinct", False) is True and draws_distinct(backend) is False:
            raise ConfigError(f"{self.name} with distinct=True draws its samples without replacement, which "
                              f"{backend.name} cannot: use the local engine for distinct=True, or distinct=False")

    @abstractmethod
    async def run(self, problem: Problem, meter: Meter, ctx: Context) -> StrategyResult:
        """Spend at most ``meter.budget`` on ``problem``; record every node in ``ctx.recorder``."""

    def sampling(self, seed: int, max_tokens: int, temperature: float, top_p: float = 1.0,
                 stop: Sequence[str] = ()) -> Sampling:
        return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop), seed=seed)


_REGISTRY: dict[str, type[Strategy[Any]]] = {}

S = TypeVar("S", bound=type[Strategy[Any]])


def register(cls: S) -> S:
    """Class decorator adding a strategy to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ConfigError(f"strategy name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy[Any]]:
    """The registered strategy called ``name``; an unknown name raises ConfigError listing the known ones."""
    _load_builtin()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown strategy {name!r}: choose one of {', '.join(sorted(_REGISTRY))} or 'auto'")
    return cls


def make_strategy(name: str, options: Mapping[str, object] | None = None) -> Strategy[Any]:
    """Build a registered strategy; unknown names and invalid or unknown options raise ConfigError."""
    cls = strategy_class(name)
    return cls(parse_options(cls.Options, options, what=f"options for strategy {name!r}"))


def parse_options(model: type[OptionsT], options: Mapping[str, object] | None, *, what: str) -> OptionsT:
    """``options`` checked against ``model``; a ConfigError names each bad or unknown one and the valid ones."""
    try:
        return model(**dict(options or {}))
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        valid = ", ".join(sorted(model.model_fields))
        raise ConfigError(f"invalid {what}: {problems} (valid options: {valid})") from None


def _describe(err: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        return f"unknown option {where!r}"
    message = str(err.get("msg"))
    return f"{where}: {message}" if where else message.removeprefix("Value error, ")


def _load_builtin() -> None:
    """Import the built-in strategy modules, so that their ``@register`` has run (imports are cached)."""
    import ttc.strategies.builtin  # noqa: F401


__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "DISTINCT",
    "Context",
    "Strategy",
    "StrategyOptions",
    "StrategyResult",
    "check_distinct",
    "make_strategy",
    "parse_options",
    "register",
    "strategy_class",
    "strategy_names",
]
