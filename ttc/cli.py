"""The ``ttc`` command line: solve one question, evaluate a dataset, inspect traces.

Every deliberate failure is a TTCError: it is printed as one line without a traceback and the exit code is 2.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ttc.api import Session, check_budget_scope, open_session, solve_problem
from ttc.bench.datasets import dataset_names, dataset_setting, load_dataset
from ttc.bench.eval import EvalReport, EvaluationStopped, check_run_seeds, check_sleep, evaluate
from ttc.cli_render import render_trace, shown, shown_or_missing
from ttc.cli_signals import restore_signals, run_interruptible
from ttc.controller.batch import UnaffordableBatch
from ttc.envvars import env_seconds
from ttc.errors import ConfigError, TTCError
from ttc.pooled import check_pooled
from ttc.session import check_context, check_prompt, check_seed
from ttc.sleeptime import load_notes, sleep_in_session, sleep_options
from ttc.storage import TraceStore
from ttc.storage.checks import MAX_LIMIT, check_limit
from ttc.storage.export import strict_json_text
from ttc.strategies.base import strategy_class
from ttc.types import Budget, Notes, Problem, Result

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Test-time compute for language models.")
traces_app = typer.Typer(no_args_is_help=True, help="Inspect recorded traces.")
app.add_typer(traces_app, name="traces")


@app.callback()
def _command(ctx: typer.Context) -> None:
    # Called before every command: an interrupted one leaves signals passed over until it has reported; run
    # in-process (not as the console script, which exits then), the handlers it found go back when it ends.
    if not _exits_after[0]:
        ctx.call_on_close(restore_signals)


_exits_after = [False]
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

BackendOpt = Annotated[str, typer.Option(help="auto | local | vllm | scripted (a dry-run stand-in model)")]
UrlOpt = Annotated[str | None, typer.Option(help="vLLM server URL (comma-separated for replicas)")]
ModelOpt = Annotated[str | None, typer.Option(help="Hugging Face model folder for the local engine")]
DbOpt = Annotated[str | None, typer.Option("--db", help="trace store: file path or SQLAlchemy URL (TTC_DB)")]
OptionOpt = Annotated[list[str] | None, typer.Option("--option", "-o", help="strategy option KEY=VALUE")]
TEMPLATE_HELP = ("how each question is put to the model: text holding {question}%s, e.g. $'Q: {question}\\nA:' in "
                 "bash; or 'mini', the bundled mini models' own (the question, then a newline). Default: the setup's "
                 "own (the mini models' for the embedded default, a generic 'Question: ...' one for other models)")
PromptTemplateOpt = Annotated[str | None, typer.Option(
    "--prompt-template",
    help=TEMPLATE_HELP % " (and {context} with --context, {context} and {notes} with --notes)")]
EvalPromptTemplateOpt = Annotated[str | None, typer.Option(
    "--prompt-template", help=TEMPLATE_HELP % " (a dataset of questions about contexts asks them through the "
                                              "model's context template instead, and refuses this option)")]

MINI_TEMPLATE = "mini"
"""The name ``--prompt-template`` takes for the bundled mini models' own template."""


_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+)")


def parse_options(pairs: list[str] | None) -> dict[str, object]:
    """``KEY=VALUE`` pairs; values are read as JSON when they parse (numbers, booleans), as a number where they
    are one JSON does not write (``.5``, ``5.``), else as the text given, whitespace and all (a template's
    trailing newlines are part of it). A key given twice is refused: which of the two would run is not what the
    command line says."""
    options: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"option {pair!r} is not KEY=VALUE (e.g. -o n=16)")
        if key in options:
            raise ConfigError(f"option {key!r} is given twice ({key}={options[key]!r} and {pair!r}): give it once")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = float(raw) if _DECIMAL.fullmatch(raw.strip()) else raw
    return options


def scripted_delay() -> float:
    """``TTC_SCRIPTED_DELAY_S``: seconds the scripted backend waits per call (default 0)."""
    return env_seconds("TTC_SCRIPTED_DELAY_S", default=0.0)


def prompt_template(given: str | None, *, about_context: bool) -> str | None:
    """The template ``--prompt-template`` names: the text given (open_session checks it), or for ``mini`` the mini
    models' own, with the context and notes first where the question is about one, as the mini stateful reasoner
    reads them."""
    if given != MINI_TEMPLATE:
        return given
    from ttc.models import MINI_CONTEXT_TEMPLATE, mini_prompt

    return MINI_CONTEXT_TEMPLATE if about_context else mini_prompt("{question}")


def make_session(backend: str, url: str | None, model: str | None, db: str | None, *, context: str | None = None,
                 notes: Notes | None = None, contextual: bool = False, template: str | None = None) -> Session:
    from ttc.testing import ScriptedBackend, guessing_responder

    if backend not in ("auto", "local", "vllm", "scripted"):
        raise ConfigError(f"unknown backend {backend!r}: use auto, local, vllm or scripted")
    # Each was dropped without a word: --model beside --url, either with a backend that reads neither, an empty one.
    for name, value in (("--url", url), ("--model", model)):
        if value is not None and not value.strip():
            raise ConfigError(f"{name} is empty: name a {'server URL' if name == '--url' else 'model folder'}, or "
                              "leave it out")
    if url and model:
        raise ConfigError("--url and --model name two models: pass --url for a vLLM server or --model for a local "
                          "folder")
    unread = {"vllm": model and "--model", "local": url and "--url", "scripted": (url and "--url") or
              (model and "--model")}.get(backend)
    if unread:
        raise ConfigError(f"--backend {backend} does not read {unread}: leave it out, or use --backend auto")
    if backend == "vllm" and not url:
        raise ConfigError("--backend vllm needs --url http://HOST:PORT (or set TTC_VLLM_URL and use auto)")
    if backend == "local" and not model:
        raise ConfigError("--backend local needs --model DIR (a Hugging Face model folder), or use auto")
    template = prompt_template(template, about_context=context is not None or notes is not None)
    if backend == "scripted":
        # TTC_SCRIPTED_DELAY_S simulates model latency, to exercise progress, interruption and resume.
        delay = scripted_delay()
        session = open_session(backend=ScriptedBackend(guessing_responder, delay_s=delay), store=db,
                               verifier=None, prompt_template=template, context=context, notes=notes,
                               contextual=contextual)
        session.setup.owned = True
        return session
    return open_session(backend=None, store=db, verifier=None, prompt_template=template,
                        url=url if backend in ("auto", "vllm") else None,
                        model=model if backend in ("auto", "local") else None, context=context, notes=notes,
                        contextual=contextual)


@app.command()
def solve(
    question: Annotated[str, typer.Argument(help="the question to answer")],
    budget: Annotated[int, typer.Option(help="generated-token budget")] = 2048,
    strategy: Annotated[str, typer.Option(help="auto, best_of_n, self_consistency, ...")] = "auto",
    backend: BackendOpt = "auto",
    url: UrlOpt = None,
    model: ModelOpt = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: random, recorded in the trace)")] = None,
    option: OptionOpt = None,
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    context: Annotated[str | None, typer.Option(help="text the question is about")] = None,
    notes: Annotated[str | None, typer.Option(
        help="id of a sleep trace (`ttc sleep`): ask the question with its context and notes")] = None,
    template: PromptTemplateOpt = None,
) -> None:
    """Answer one question within a token budget and record its trace."""
    check_prompt(question)  # before a model loads or a store is made
    options = parse_options(option)
    check_seed(seed)
    limits = Budget.of(budget)
    if strategy != "auto":
        strategy_class(strategy)  # an unknown name makes no store and loads no model
    kept = load_notes(notes, store=db) if notes is not None else None
    session = make_session(backend, url, model, db, context=context, notes=kept, template=template)

    async def main() -> Result:
        try:
            return await solve_problem(Problem(question=question), limits, session, strategy=strategy,
                                       seed=seed, options=options)
        finally:
            await session.aclose()

    result = run_interruptible(main)
    if as_json:
        _write_json(_result_json(result), "result")
        return
    out.print(Text.assemble(("answer:", "bold"), " ", shown_or_missing(result.answer)))
    out.print(Text.assemble(f"strategy={shown(result.strategy)} score=", shown_or_missing(result.score),
                            f" tokens={result.usage.generated_tokens} calls={result.usage.backend_calls} "
                            f"wall={result.usage.wall_s:.2f}s"))
    if result.trace_id:
        out.print(f"trace: {result.trace_id}  (ttc traces show {result.trace_id[:8]})")


@app.command("sleep")
def sleep_cmd(
    context: Annotated[str, typer.Argument(help="the context questions will be about")],
    budget: Annotated[int, typer.Option(help="generated-token budget for thinking about it")] = 1024,
    backend: BackendOpt = "auto",
    url: UrlOpt = None,
    model: ModelOpt = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: random, recorded in the trace)")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="sleep option KEY=VALUE: n, max_tokens, temperature, top_p, check_arithmetic")] = None,
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the notes as JSON")] = False,
) -> None:
    """Think about a context before its questions come (sleep-time compute); then `ttc solve Q --notes ID`."""
    check_seed(seed)  # before a store is made or a model loads
    options = sleep_options(parse_options(option))
    check_context(context, None)
    limits = Budget.of(budget)
    session = make_session(backend, url, model, db, contextual=True)

    async def main() -> Notes:
        try:
            return await sleep_in_session(context, limits, session, seed=seed, sleep_template=None,
                                          options=options)
        finally:
            await session.aclose()

    notes = run_interruptible(main)
    if as_json:
        _write_json({"context": notes.context, "notes": notes.text, "trace_id": notes.trace_id,
                     "model": notes.model, "usage": notes.usage.__dict__}, "notes")
        return
    out.print("[bold]notes:[/bold]")
    out.print(Text(shown(notes.text)) if notes.text else "(none)")
    out.print(f"tokens={notes.usage.generated_tokens} calls={notes.usage.backend_calls} "
              f"wall={notes.usage.wall_s:.2f}s")
    if notes.trace_id:
        out.print(f"trace: {notes.trace_id}  (ttc solve QUESTION --notes {notes.trace_id[:8]})")


def _write_json(data: object, what: str) -> None:
    """Plain strict JSON on stdout, whatever the terminal: a styled console colours it (FORCE_COLOR in CI) and
    writes a non-finite score as a bare NaN, neither of which a JSON reader takes."""
    sys.stdout.write(strict_json_text(data, what, indent=2) + "\n")


def _result_json(result: Result) -> dict[str, Any]:
    return {"answer": result.answer, "text": result.text, "score": result.score, "strategy": result.strategy,
            "trace_id": result.trace_id, "usage": result.usage.__dict__,
            "candidates": [c.__dict__ for c in result.candidates]}


@app.command("eval")
def eval_cmd(
    dataset: Annotated[str, typer.Option(help=f"{', '.join(dataset_names())}, or a .jsonl path")] = "gsm8k",
    limit: Annotated[int | None, typer.Option(
        help="number of problems (default: all; 100 for a synthetic dataset)")] = None,
    offset: Annotated[int, typer.Option(help="skip this many rows first")] = 0,
    budget: Annotated[int, typer.Option(help="generated-token budget per problem")] = 2048,
    strategy: Annotated[str, typer.Option()] = "auto",
    backend: BackendOpt = "auto",
    url: UrlOpt = None,
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option(help="base seed; problem i uses seed + i")] = 0,
    concurrency: Annotated[int, typer.Option(help="problems in flight at once")] = 8,
    resume: Annotated[str | None, typer.Option(help="continue the run with this id")] = None,
    budget_scope: Annotated[str, typer.Option(
        help="'question': each problem gets --budget; 'batch': the problems share --budget times their number, "
             "and easy ones leave theirs to those whose votes are split (strategy auto, self_consistency or a "
             "tree search)")
    ] = "question",
    option: OptionOpt = None,
    sleep_budget: Annotated[int | None, typer.Option(
        help="think about each context once before its questions, within this many tokens (sleep-time compute; "
             "datasets of questions about contexts: synthetic-stateful, or JSONL rows with a 'context')")] = None,
    sleep_option: Annotated[list[str] | None, typer.Option(
        "--sleep-option", help="sleep option KEY=VALUE: n, max_tokens, temperature, top_p, check_arithmetic")] = None,
    template: EvalPromptTemplateOpt = None,
    db: DbOpt = None,
) -> None:
    """Evaluate a strategy on a dataset: accuracy, mean tokens, wall time; every trace is recorded."""
    problems = load_dataset(dataset, limit=limit, offset=offset, seed=seed)
    options = parse_options(option)
    sleep_opts = parse_options(sleep_option)
    scope = check_budget_scope(budget_scope)
    if scope == "batch":
        try:  # --budget is each question's share of the pool, so it is checked as a batch of one
            check_pooled(Budget.of(budget), 1, strategy=strategy, options=options)
        except UnaffordableBatch as short:
            raise ConfigError(short.per_question("--budget", option_flag="-o")) from None
    sleep = None if sleep_budget is None else Budget.of(sleep_budget)
    check_sleep(problems, sleep, sleep_opts)  # before the model loads
    check_run_seeds(problems, seed, sleeps=sleep is not None)
    contextual = _about_contexts(problems, dataset)
    if contextual and template is not None:
        raise ConfigError(f"--prompt-template is how questions without a context are put to the model, and "
                          f"{dataset}'s questions are about contexts, which the model's context template puts: "
                          "leave it out")
    # Questions about contexts go to the setup's model for contexts (the embedded default's stateful reasoner).
    session = make_session(backend, url, model, db, contextual=contextual, template=template)
    config = {"dataset": dataset_setting(dataset), "limit": limit, "offset": offset, "budget": budget,
              "strategy": strategy, "backend": session.setup.backend.name, "seed": seed, "options": options}
    if scope != "question":
        config["budget_scope"] = scope
    if contextual:
        config["contexts"] = True  # asked with their contexts: a run that asked them whole does not resume as one
    if sleep_budget is not None:
        config |= {"sleep_budget": sleep_budget, "sleep_options": sleep_opts}

    async def main() -> EvalReport:
        try:
            with _progress() as bar:
                task = bar.add_task(f"{dataset} · {strategy}", total=len(problems))
                finished.append(await evaluate(
                    problems, Budget.of(budget), session, strategy=strategy, options=options, seed=seed,
                    concurrency=concurrency, config=config, resume=resume, progress=lambda _p, _r: bar.advance(task),
                    budget_scope=scope, sleep=sleep, sleep_opts=sleep_opts, opened=runs.append))
                return finished[0]
        finally:
            await session.aclose()

    runs: list[str] = []
    finished: list[EvalReport] = []  # the run's report, once it has ended (a signal may come while closing)
    try:
        report = run_interruptible(main)
    except KeyboardInterrupt:
        if finished:
            _print_report(finished[0], sleeps=sleep is not None)
        elif runs:  # the run reads 'interrupted'; its id is what --resume needs
            err.print(f"run {runs[0]} interrupted: rerun with --resume {runs[0]}", soft_wrap=True)
        raise
    except EvaluationStopped as stopped:  # what was done is shown; the store's error (exit 2) comes after it
        if stopped.report is not None:
            _print_report(stopped.report, sleeps=sleep is not None)
        raise
    _print_report(report, sleeps=sleep is not None)
    if report.failed or report.done < report.total:
        again = (f"; {report.lasting} of the failures above are their input's (a ConfigError, or a solution too "
                 "long for the verifier), which a resume with the same settings meets again" if report.lasting else "")
        err.print(f"{report.total - report.done} problems not done: rerun with --resume {report.run_id}{again}")
        raise typer.Exit(1)


def _about_contexts(problems: Sequence[Problem], dataset: str) -> bool:
    """Whether the questions are about contexts. One evaluation asks every question of the one session, whose model
    is either the setup's for contexts (on the embedded default, the stateful reasoner, with no verifier) or its
    model for plain questions: a dataset mixing the two kinds would have one kind answered by the wrong model."""
    about = next((p for p in problems if p.context is not None), None)
    plain = next((p for p in problems if p.context is None), None)
    if about is not None and plain is not None:
        raise ConfigError(f"{dataset} mixes questions about a context (line {(about.index or 0) + 1}) with questions "
                          f"without one (line {(plain.index or 0) + 1}), which go to different models: evaluate "
                          "them as two datasets, the rows with a 'context' in one file and the others in another")
    return about is not None


def _print_report(report: EvalReport, *, sleeps: bool) -> None:
    table = Table(title=f"run {report.run_id}")
    columns = ["problems", "done", "failed", "no answer", "accuracy", "mean tokens"]
    row = [str(report.total), str(report.done), str(report.failed), str(report.unanswered), f"{report.accuracy:.3f}",
           f"{report.mean_tokens:.1f}"]
    if sleeps:
        columns += ["contexts", "sleep tokens", "all tokens / question"]
        row += [str(report.contexts), str(report.sleep_tokens), f"{report.mean_total_tokens:.1f}"]
    for col in [*columns, "wall s"]:
        table.add_column(col, justify="right")
    table.add_row(*row, f"{report.wall_s:.1f}")
    out.print(table)
    for line in report.errors[:10]:
        err.print(Text(shown(line), style="red"), soft_wrap=True)
    if report.unanswered:
        out.print(f"{report.unanswered} of {report.done} questions ended without an answer (counted wrong): no "
                  "solution finished within the budget, or none stated one; a larger --budget lets long ones finish")
    out.print(f"inspect: ttc traces list --run {report.run_id}")


@app.command()
def demo(
    problems: Annotated[int, typer.Option(help="held-out synthetic problems")] = 40,
    samples: Annotated[int, typer.Option(help="samples per question for the test-time-compute arms")] = 8,
    seed: Annotated[int, typer.Option()] = 0,
    concurrency: Annotated[int, typer.Option()] = 8,
    db: DbOpt = None,
) -> None:
    """Greedy versus test-time compute on the bundled mini models (no server, no GPU), or on the model TTC_MODEL or
    TTC_VLLM_URL names: accuracy, tokens, time."""
    from ttc.bench.demo import run_demo

    session = make_session("auto", None, None, db)

    async def main() -> list[tuple[Any, EvalReport]]:
        try:
            with _progress() as bar:
                task = bar.add_task("demo", total=None)
                return await run_demo(session, problems=problems, samples=samples, seed=seed,
                                      concurrency=concurrency, progress=lambda _p, _r: bar.advance(task))
        finally:
            await session.aclose()

    reports = run_interruptible(main)
    table = Table(title=f"synthetic benchmark, {problems} held-out problems, backend {session.setup.backend.name}")
    for col in ("arm", "accuracy", "failed", "mean tokens", "wall s", "run"):
        table.add_column(col, justify="right")
    for arm, report in reports:  # a run's first 8 characters: --run and --resume take a unique prefix
        table.add_row(arm.label, f"{report.accuracy:.3f}", str(report.failed), f"{report.mean_tokens:.1f}",
                      f"{report.wall_s:.1f}", report.run_id[:8])
    out.print(table)
    last = reports[-1][1]
    out.print(f"inspect: ttc traces list --run {last.run_id}   then   ttc traces show {last.trace_ids[0][:8]}"
              f"   (or browse them: ttc view)" if last.trace_ids else "")
    # Accuracy counts the questions each arm finished: where some failed, the arms compared other questions.
    failed = [(arm, report) for arm, report in reports if report.failed or report.done < report.total]
    for arm, report in failed:
        err.print(f"{arm.label}: {report.total - report.done} of {report.total} problems failed; its accuracy "
                  f"counts the {report.done} it finished (ttc traces list --run {report.run_id[:8]})")
        for line in report.errors[:3]:
            err.print(Text(shown(line), style="red"), soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def view(
    db: DbOpt = None,
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 8321,
) -> None:
    """Browse the trace store in a web browser: runs, traces, each trace's tree, scores and decisions."""
    from ttc.viewer import make_server, serve

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, got {port}")
    with TraceStore(db, read_only=True) as store:
        server = make_server(store, host, port)
        # One line, flushed at once, so a script starting the viewer can read the address it got.
        print(f"ttc viewer on {server.url} for {store.url} (Ctrl-C stops it)", flush=True)
        if store.snapshot:
            err.print("note: the store's folder is not writable, so the viewer reads the store as it is now: traces "
                      "written from now on show after a restart of the viewer (make the folder writable to see "
                      "them live)")
        with contextlib.suppress(KeyboardInterrupt):
            serve(server)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False, disable=not sys.stderr.isatty())


def _newest(listing: Callable[[int], list[T]], limit: int, what: str) -> list[T]:
    """The newest ``limit`` rows, and a line on stderr where more match: a run's 60 traces listed as 50 read as
    the whole run."""
    check_limit(limit)
    rows = listing(limit + 1) if limit < MAX_LIMIT else listing(limit)
    if len(rows) > limit:
        err.print(f"the newest {limit} {what} are shown and more match: pass a larger --limit to see them")
    return rows[:limit]


@traces_app.command("list")
def traces_list(
    run: Annotated[str | None, typer.Option(help="only traces of this run")] = None,
    status: Annotated[str | None, typer.Option(help="running, done or failed")] = None,
    limit: Annotated[int, typer.Option()] = 50,
    db: DbOpt = None,
) -> None:
    """List recent traces."""
    with TraceStore(db, read_only=True) as store:
        rows = _newest(lambda n: store.list_traces(run_id=run, status=status, limit=n), limit, "traces")
    table = Table()
    for col in ("id", "status", "strategy", "answer", "tokens", "question"):
        table.add_column(col)
    for t in rows:
        table.add_row(t.id[:8], t.status, Text(shown(t.strategy)), shown_or_missing(t.answer),
                      shown_or_missing(t.generated_tokens), Text(shown(_short(t.question, 60))))
    out.print(table)


@traces_app.command("runs")
def traces_runs(limit: Annotated[int, typer.Option()] = 20, db: DbOpt = None) -> None:
    """List recent evaluation runs (`ttc eval`, `ttc demo`); a single solve is a trace of no run."""
    with TraceStore(db, read_only=True) as store:
        rows = _newest(lambda n: store.list_runs(limit=n), limit, "runs")
    table = Table()
    table.add_column("id", no_wrap=True, min_width=36)  # whole: `--run` takes whole run ids
    for col in ("kind", "status", "started", "summary"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.id, r.kind, r.status, str(r.started_at)[:19], Text(json.dumps(r.summary)[:80]))
    out.print(table)


@traces_app.command("show")
def traces_show(trace_id: Annotated[str, typer.Argument(help="trace id or a unique prefix")],
                db: DbOpt = None) -> None:
    """Show one trace: its problem, result, usage, and the tree of nodes."""
    with TraceStore(db, read_only=True) as store:
        record = store.get_trace(trace_id)
    render_trace(out, record)


@traces_app.command("export")
def traces_export(trace_id: Annotated[str, typer.Argument()],
                  format: Annotated[str, typer.Option(help="json")] = "json",
                  output: Annotated[Path | None, typer.Option(help="write to this file instead of stdout")] = None,
                  db: DbOpt = None) -> None:
    """Export a trace as strict JSON (RFC 8259).

    JSON has no NaN or infinity: a non-finite number (e.g. a logprob of -inf) is written as a string.

    Those strings are "NaN", "Infinity" and "-Infinity"; float() reads each back. Times are ISO 8601 strings.
    """
    if format != "json":
        raise ConfigError(f"unknown export format {format!r}: only json is supported")
    with TraceStore(db, read_only=True) as store:
        data = store.export_trace(trace_id)
    text = strict_json_text(data, "trace", indent=2)
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        try:
            output.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {output}: {exc.strerror or exc}; pass --output a path in a writable "
                              "folder") from None


def _short(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _is_usage_error(exc: Exception) -> bool:
    """A usage error of the command line (a missing argument, a bad value, an unknown command): click's own, or
    those of the copy of click that typer vendors from 0.2x on, which do not derive from click's. That typer does
    not install click, so click is looked for, not imported."""
    click = sys.modules.get("click")
    kinds = tuple(k for k in (getattr(click, "ClickException", None), getattr(typer, "TyperException", None))
                  if isinstance(k, type))
    return isinstance(exc, kinds) and hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int)


def _with_notes(exc: BaseException) -> str:
    """The message and the notes added to it on its way up (a trace or run that could not be marked either, and so
    still reads 'running'): the one line printed is all the user learns of the failure."""
    notes = [str(note) for note in getattr(exc, "__notes__", ())]
    return "; ".join([str(exc), *notes])


def _terminate_as_interrupt(_signum: int, frame: FrameType | None) -> None:
    """SIGTERM (``kill``, ``timeout``, a scheduler) ends a command the way Ctrl-C does. This handler applies outside
    a command's event loop (before it starts, while a report prints), where no trace is open; inside it, both
    signals cancel the command's work (``ttc.cli_signals``). Where SIGINT is ignored (a background job of a
    script), SIGTERM still ends the command."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def main(*, restore_signals: bool = True) -> None:
    """Entry point: typed errors become one red line and exit code 2. With ``restore_signals`` the signal handlers
    found are put back on the way out, for a process that goes on after the command; the console script exits
    instead (``ttc.entry``), and a signal between the two would land in neither's handling."""
    found = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _exits_after[0] = not restore_signals
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        _main()
    finally:
        for sig, handler in found.items() if restore_signals else ():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _main() -> None:
    try:
        # Without standalone mode click returns an Exit's code (typer.Exit(1) after failed problems, 130 on
        # Ctrl-C) instead of exiting with it, so the code is passed on here.
        code = app(standalone_mode=False)
    except TTCError as exc:
        err.print(Text.assemble(("error:", "red"), " ", shown(_with_notes(exc))), highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:  # click's usage errors
        if _is_usage_error(exc):
            exc.show()  # type: ignore[attr-defined]
            raise SystemExit(exc.exit_code) from None  # type: ignore[attr-defined]
        raise
    if code == 130:
        _interrupted()
    if isinstance(code, int) and code:
        raise SystemExit(code)


def _interrupted() -> NoReturn:
    """Exit 130, as a shell reports Ctrl-C."""
    err.print("interrupted")
    raise SystemExit(130)


__all__ = ["app", "main"]
