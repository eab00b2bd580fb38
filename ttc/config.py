"""Settings from the environment, and the choice of the default backend.

Environment variables (all optional):

- ``TTC_VLLM_URL``: a vLLM server (comma-separated for replicas); wins over ``TTC_MODEL`` (a ``--url`` or
  ``--model`` given on the command line wins over both).
- ``TTC_VLLM_MODEL``: the model to ask that server for (``TTC_VLLM_URL``, or the ``--url`` / ``url=`` given instead),
  where it serves several; by default the first it lists. The draft and synthesizer servers are each asked for the
  model they serve: they run other models, which this name does not fit.
- ``TTC_MODEL``: a Hugging Face model folder for the in-process local engine.
- ``TTC_DRAFT_MODEL`` / ``TTC_DRAFT_URL``: a draft model (a local folder, or a vLLM server) for the lookahead
  strategy; it must share the target's tokenizer. The embedded default brings the mini draft.
- ``TTC_SYNTHESIZER_MODEL`` / ``TTC_SYNTHESIZER_URL``: the model that reads parallel thinking's paths and writes
  the answer (a local folder, or a vLLM server), asked through the generic synthesis templates; without one the
  target synthesizes. The embedded default brings the mini synthesizer (for questions about a context, the
  mini stateful reasoner synthesizes itself).
- ``TTC_DB``: the trace store, as a file path or an SQLAlchemy URL.
- ``TTC_THREADS``: CPU threads of the local engine.
- ``TTC_DATA_DIR``: where benchmark JSONL files live (default: the first of ``../shared/datasets``,
  ``./datasets`` and ``shared/datasets`` beside the checkout that exists).
- ``TTC_VLLM_API_KEY``: the API key sent to every vLLM server (the target's and the helpers').
- ``TTC_VLLM_TIMEOUT``: seconds one vLLM request may take (default 120); a backend's own ``timeout=`` wins.
- ``TTC_DB_BUSY_TIMEOUT_S``: seconds a locked trace store is waited for (default 10).
- ``TTC_SCRIPTED_DELAY_S``: seconds the CLI's scripted stand-in model waits per call (default 0).

Each is trimmed, a blank one is unset, and a folder or file path may start with ``~``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ttc.backends.base import MAX_THREADS, Backend
from ttc.concurrency import outlast_cancellation, start_in_thread
from ttc.contexts import DEFAULT_CONTEXT_TEMPLATE, DEFAULT_SLEEP_TEMPLATE
from ttc.envvars import env_text
from ttc.errors import ConfigError
from ttc.strategies.base import DEFAULT_PROMPT_TEMPLATE
from ttc.strategies.synthesis import PATH_TEMPLATE, SYNTHESIS_TEMPLATE
from ttc.verifiers.base import AGGREGATIONS, Aggregation, OutcomeVerifier, ProcessVerifier, StepwiseOutcome

NO_BACKEND_HELP = (
    "no backend is configured: pass backend=..., or set TTC_VLLM_URL=http://HOST:PORT to use a vLLM server, "
    "or TTC_MODEL=/path/to/hf-model-folder to run a model in process (needs `pip install 'ttc-engine[local]'`)"
)


LOCAL_PACKAGES = ("torch", "tokenizers", "safetensors")
"""What the local engine imports to load and run a model folder: the ``local`` extra, less transformers, which
loading and running do not import."""


@dataclass
class BackendSetup:
    """A backend together with the prompt format and verifier that belong with its model."""

    backend: Backend
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    verifier: OutcomeVerifier | None = None
    prm: ProcessVerifier | None = None
    owned: bool = True
    closers: tuple[Backend, ...] = ()
    draft: Backend | None = None
    draft_loader: Callable[[], Backend] | None = None
    solution_tokens: int | None = None
    """A typical solution's length in tokens, where the setup knows its model (the controller sizes searches by
    it); None for models nothing is known of."""
    step_tokens: int | None = None
    """The most tokens one reasoning step of this model takes, where the setup knows it."""
    distinct_children: bool = False
    """``auto``'s searches draw each node's children without replacement (``Sampling.distinct``), and ``auto``
    searches with REBASE, which gains most from them: for a backend that can, and a model on which it was measured
    to pay."""
    sleep_template: str = DEFAULT_SLEEP_TEMPLATE
    """How this model is asked to think about a context before questions come (``ttc.contexts``)."""
    context_template: str = DEFAULT_CONTEXT_TEMPLATE
    """How this model is asked a question about a context, with or without notes."""
    synthesizer: Backend | None = None
    synthesizer_loader: Callable[[], Backend] | None = None
    """The model that reads a question's parallel paths and writes the final solution (parallel thinking); without
    one the target model synthesizes."""
    _loading: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held while a helper model loads (see :meth:`draft_backend`)."""
    _pending: set[concurrent.futures.Future[Backend | None]] = field(default_factory=set, repr=False, compare=False)
    """Helper models loading off the event loop (see :meth:`_load`)."""
    synthesis_template: str = SYNTHESIS_TEMPLATE
    """How the synthesizer is shown a question and its paths (``ttc.strategies.synthesis``)."""
    path_template: str = PATH_TEMPLATE
    """How one distinct path appears in the synthesis template."""

    def draft_backend(self) -> Backend | None:
        """The draft model, loaded on first use: only lookahead needs one, so other runs never pay for it. A draft
        this setup loaded is closed with it; a caller's own draft is left open. Async code loads it off the event
        loop (:meth:`load_draft`), so the load is guarded: two questions asking at once load it once."""
        with self._loading:
            if self.draft is None and self.draft_loader is not None:
                self.draft = self.draft_loader()
                self.closers = (*self.closers, self.draft)
            return self.draft

    def synthesizer_backend(self) -> Backend | None:
        """The synthesis model, loaded on first use like the draft: only parallel thinking needs one."""
        with self._loading:
            if self.synthesizer is None and self.synthesizer_loader is not None:
                self.synthesizer = self.synthesizer_loader()
                self.closers = (*self.closers, self.synthesizer)
            return self.synthesizer

    async def load_draft(self) -> Backend | None:
        """:meth:`draft_backend` on a thread of its own where it has a model to load: a load takes up to seconds,
        and every other task of the caller's event loop stalled for as long."""
        if self.draft is not None or self.draft_loader is None:
            return self.draft
        return await self._load(self.draft_backend)

    async def load_synthesizer(self) -> Backend | None:
        """:meth:`synthesizer_backend` on a thread of its own where it has a model to load (see :meth:`load_draft`)."""
        if self.synthesizer is not None or self.synthesizer_loader is None:
            return self.synthesizer
        return await self._load(self.synthesizer_backend)

    async def _load(self, load: Callable[[], Backend | None]) -> Backend | None:
        """A load awaited off the loop, and kept in ``_pending`` until it ends: a caller cancelled meanwhile goes
        on to close the setup, which waits for it, so that the model it loads is among those closed."""
        pending = start_in_thread(load)
        self._pending.add(pending)
        pending.add_done_callback(self._pending.discard)
        return await asyncio.shield(asyncio.wrap_future(pending))

    async def aclose(self) -> None:
        """Close the backends this setup opened (a caller's own backend is left open), once every helper model
        still loading has loaded."""
        for pending in list(self._pending):
            with contextlib.suppress(Exception):  # a load that failed opened nothing
                await outlast_cancellation(asyncio.wrap_future(pending))
        own = (self.backend, *self.closers) if self.owned else \
            tuple(b for b in self.closers if b is self.draft or b is self.synthesizer)
        for backend in own:
            await backend.aclose()


MINI_SOLUTION_TOKENS = 128
"""A mini solution is about 100 tokens (one character each); searches over the mini models get one path per 128."""
MINI_STATEFUL_SOLUTION_TOKENS = 288
"""The mini stateful reasoner's longest writing: a context's derivation and an answer, about 250 characters."""
MINI_STEP_TOKENS = 24
"""A mini step (``17 + 8 = 25``, ``The answer is 25.``) is under 24 characters."""


def preferred_aggregate(prm: ProcessVerifier) -> Aggregation:
    """How ``prm`` wants its step scores to rank a path (its ``preferred_aggregate``), else ``min``. Read when a
    call starts, so that a value no aggregation knows is refused before anything is spent, not at the first
    scoring of a search."""
    value: object = getattr(prm, "preferred_aggregate", "min")
    for how in AGGREGATIONS:
        if isinstance(value, str) and value == how:
            return how
    raise ConfigError(f"{type(prm).__name__}.preferred_aggregate is {value!r:.60}: set it to one of "
                      f"{', '.join(AGGREGATIONS)} (how its step scores rank a path), or leave it out (whole "
                      "solutions then rank by min, tree searches by last)")


def solution_scorer(prm: ProcessVerifier) -> StepwiseOutcome:
    """``prm`` scoring whole solutions by the aggregation it prefers: a verifier that judges the whole prefix
    (``last``) would otherwise rank best-of-N's samples by a weakest step it never meant as the path's score."""
    return StepwiseOutcome(prm, how=preferred_aggregate(prm))


def default_backend(*, url: str | None = None, model: str | Path | None = None,
                    contextual: bool = False) -> BackendSetup:
    """Resolve the backend to use when the caller gave none: a vLLM URL, then a local model folder.

    What the caller names (``url``, ``model``) comes before the environment (``TTC_VLLM_URL``, ``TTC_MODEL``), so
    ``ttc solve --backend local --model DIR`` runs DIR even where a shell exports a server's URL. ``contextual``
    asks for the model that answers questions about a shared context: a configured model does both, and the
    embedded default then brings its stateful reasoner instead of the reasoner.
    """
    if url:
        return with_helpers(BackendSetup(backend=_vllm(url, what="url", model=env_text("TTC_VLLM_MODEL"))))
    if model:
        return with_helpers(BackendSetup(backend=_local(Path(model).expanduser())))
    if url := env_text("TTC_VLLM_URL"):
        return with_helpers(BackendSetup(backend=_vllm(url, what="TTC_VLLM_URL", model=env_text("TTC_VLLM_MODEL"))))
    if model := env_text("TTC_MODEL"):
        return with_helpers(BackendSetup(backend=_local(Path(model).expanduser())))
    embedded = _embedded(contextual)
    if embedded is not None:
        return with_helpers(embedded)
    raise ConfigError(NO_BACKEND_HELP)


def with_helpers(setup: BackendSetup) -> BackendSetup:
    """Where the draft and the synthesis model come from: ``TTC_DRAFT_URL``, then ``TTC_DRAFT_MODEL``, then what
    the setup brings; likewise ``TTC_SYNTHESIZER_URL`` and ``TTC_SYNTHESIZER_MODEL``. Both load on first use.

    A synthesizer from the environment is asked through the generic synthesis templates, not the ones the setup
    had for its own (the embedded default's mini synthesizer reads a format no other model was trained on).
    """
    if (draft := _env_model("TTC_DRAFT_URL", "TTC_DRAFT_MODEL")) is not None:
        setup.draft_loader = draft
    if (synthesizer := _env_model("TTC_SYNTHESIZER_URL", "TTC_SYNTHESIZER_MODEL")) is not None:
        setup.synthesizer_loader = synthesizer
        setup.synthesis_template, setup.path_template = SYNTHESIS_TEMPLATE, PATH_TEMPLATE
    return setup


def _env_model(url_var: str, model_var: str) -> Callable[[], Backend] | None:
    """A loader for the model the environment names: a vLLM server (``url_var``) before a local folder
    (``model_var``); None when it names neither. The server is asked for the model it serves, not for
    ``TTC_VLLM_MODEL``: that names the target's model, which a draft or synthesizer server does not serve."""
    if url := env_text(url_var):
        return lambda: _vllm(url, what=url_var)
    if model := env_text(model_var):
        path = Path(model).expanduser()  # a quoted or .env value reaches here with its ~ unexpanded
        return lambda: _local(path, what=model_var)
    return None


def _vllm(url: str, *, what: str, model: str | None = None) -> Backend:
    """A vLLM backend for ``url`` asking for ``model`` (None: the one the server serves); an error in it names where
    it came from (``what``: a variable or argument)."""
    try:
        from ttc.backends.vllm import VLLMBackend
    except ImportError as exc:  # pragma: no cover - the module ships with ttc
        raise ConfigError(f"the vLLM backend is unavailable: {exc}") from exc
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise ConfigError(f"{what} {url!r} names no server URL: set it to one such as http://127.0.0.1:8000 "
                          "(comma-separated for replicas)")
    try:
        return VLLMBackend(urls, model=model, api_key=env_text("TTC_VLLM_API_KEY"))
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _local(path: Path, *, what: str = "TTC_MODEL / --model") -> Backend:
    if not path.is_dir():
        raise ConfigError(f"model folder {path} does not exist: {what} must name a folder with "
                          "config.json, model.safetensors and tokenizer.json")
    try:
        from ttc.backends.local import LocalBackend

        return LocalBackend.from_pretrained(path, threads=_threads(None))
    except ImportError as exc:  # torch, or a package the engine imports as it loads (tokenizers, safetensors)
        raise ConfigError(f"the local engine needs the local extra: `pip install 'ttc-engine[local]'` ({exc})") \
            from exc


def _embedded(contextual: bool = False) -> BackendSetup | None:
    """The embedded default when the package ships the mini models and the local extra is installed; None where
    the models are absent (the caller then explains how to configure a backend). Only their absence means None:
    a missing package of the local extra, a wrong ``TTC_THREADS`` or a model that fails to load is reported as
    itself, since a base install that has the models needs only that extra, which the generic advice would not say."""
    from ttc.models import MiniModelName, mini_model_path

    needed: tuple[MiniModelName, ...] = ("stateful",) if contextual else ("reasoner", "checker")
    try:
        for name in needed:
            mini_model_path(name)
    except ConfigError:
        return None
    missing = [name for name in LOCAL_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"no backend is configured, and the bundled mini models need {', '.join(missing)} to run "
                          "in process: `pip install 'ttc-engine[local]'`; or set TTC_VLLM_URL=http://HOST:PORT to use "
                          "a vLLM server")
    return embedded_context_setup() if contextual else embedded_setup()


def _threads(default: int | None) -> int | None:
    """``TTC_THREADS``: CPU threads of a local engine (default: torch's choice; 1 for the tiny bundled models,
    which are faster on one thread than on several that wait for each other)."""
    raw = env_text("TTC_THREADS")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_THREADS:  # "²".isdigit(), int("²") fails
        raise ConfigError(f"TTC_THREADS must be an integer in [1, {MAX_THREADS}], got {raw!r}")
    return int(raw)


def embedded_setup(*, threads: int | None = None) -> BackendSetup:
    """The bundled mini reasoner and mini checker (its process verifier), each on its own local engine; the mini
    draft and the mini synthesizer load when a strategy asks for them."""
    from ttc.backends.local import LocalBackend
    from ttc.models import MINI_PATH_TEMPLATE, MINI_SYNTHESIS_TEMPLATE, mini_model_path, mini_prompt
    from ttc.verifiers.prm import load_prm

    reasoner_dir, checker_dir = mini_model_path("reasoner"), mini_model_path("checker")
    threads = threads or _threads(1)
    reasoner = LocalBackend.from_pretrained(reasoner_dir, threads=threads)
    try:
        # The checker's likelihood ranks a right next step above a wrong one far more often than the mini token
        # PRM does (the model card has both figures), so it is the default's process verifier.
        prm = load_prm(LocalBackend.from_pretrained(checker_dir, threads=threads), "mini-checker")
    except BaseException as exc:
        # Synchronous: asolve resolves its backend inside an event loop, where aclose could not be awaited here.
        try:
            reasoner.close()
        except Exception as close_error:
            exc.add_note(f"closing {reasoner.name} after this error failed too: {type(close_error).__name__}: "
                         f"{close_error}")
        raise
    draft_dir = mini_model_path("draft")
    return BackendSetup(backend=reasoner, prompt_template=mini_prompt("{question}"), verifier=solution_scorer(prm),
                        prm=prm, closers=(prm.backend,),
                        draft_loader=lambda: LocalBackend.from_pretrained(draft_dir, threads=threads),
                        synthesizer_loader=lambda: LocalBackend.from_pretrained(mini_model_path("synthesizer"),
                                                                                threads=threads),
                        synthesis_template=MINI_SYNTHESIS_TEMPLATE, path_template=MINI_PATH_TEMPLATE,
                        solution_tokens=MINI_SOLUTION_TOKENS, step_tokens=MINI_STEP_TOKENS,
                        # auto searches with REBASE, each round's children different next steps: 79.2-82.3% from
                        # 1024 tokens on two draws (docs/mini_models.md, samples drawn without replacement).
                        distinct_children=True)


def embedded_context_setup(*, threads: int | None = None) -> BackendSetup:
    """The bundled mini stateful reasoner: questions about a shared context, and notes about one at sleep time.

    It has no verifier: the checker was trained on the reasoner's prompts, not on contexts with notes. The mini
    draft shares its tokenizer and loads when lookahead asks for it, so that lookahead runs here too; trained on
    the reasoner's solutions, it rarely guesses this model's steps (3 of 402 proposals accepted on 12 held-out
    questions), so lookahead writes the greedy solution without saving time. No synthesis model: the mini
    synthesizer was trained on the reasoner's questions and misreads a context's (none right of 24 held-out
    questions, where the stateful reasoner's greedy answer had 10), so the stateful reasoner synthesizes, through
    the mini templates its vocabulary can spell (the generic ones hold characters it has no token for).
    """
    from ttc.backends.local import LocalBackend
    from ttc.models import (
        MINI_CONTEXT_TEMPLATE,
        MINI_PATH_TEMPLATE,
        MINI_SLEEP_TEMPLATE,
        MINI_SYNTHESIS_TEMPLATE,
        mini_model_path,
        mini_prompt,
    )

    threads = threads or _threads(1)
    model = LocalBackend.from_pretrained(mini_model_path("stateful"), threads=threads)
    draft_dir = mini_model_path("draft")
    return BackendSetup(backend=model, prompt_template=mini_prompt("{question}"),
                        solution_tokens=MINI_STATEFUL_SOLUTION_TOKENS, step_tokens=MINI_STEP_TOKENS,
                        sleep_template=MINI_SLEEP_TEMPLATE, context_template=MINI_CONTEXT_TEMPLATE,
                        draft_loader=lambda: LocalBackend.from_pretrained(draft_dir, threads=threads),
                        synthesis_template=MINI_SYNTHESIS_TEMPLATE, path_template=MINI_PATH_TEMPLATE)


__all__ = ["NO_BACKEND_HELP", "BackendSetup", "default_backend", "embedded_context_setup", "embedded_setup",
           "preferred_aggregate", "solution_scorer", "with_helpers"]
