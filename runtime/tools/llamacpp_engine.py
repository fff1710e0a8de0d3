"""llama.cpp's own server as a benchmark peer: the BF16 target, a draft model, prompt lookup, the shipped GGUF.

Why the server: it is how llama.cpp users run speculative decoding with a draft model (`-md`, spec type
`draft-simple`) and prompt lookup (`ngram-simple`: the tokens that followed the last earlier occurrence of
the current n-gram), all in llama.cpp's C++ loop, and it keeps the models loaded between prompts, so a
request's wall time is the work of one prompt, as for every other row. Like the openvino-genai wrapper, it is
given our runtime's token ids (so every engine reads the same prompt), generates greedy raw completions
(temperature 0, no chat template, no stop strings) and hands back token ids, and it reads every prompt
afresh: `cache_prompt` off and the host-memory prompt cache disabled. Both cores, one slot (batch 1).
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..cpu import cpu_has
from .llamacpp_build import LlamaCppError

# The fastest of the settings tried on humaneval:0-2 (the prompts `specqd tune` learned from until 2026-12-05) with
# scripts/research/llamacpp_draft_sweep.py; the sweep is in docs/benchmarks.md, "llama.cpp". This llama.cpp's
# own defaults are slower here: 3 draft tokens with no confidence stop (0.94x its target alone, against 1.17x),
# and lookup of 12-token n-grams, which never matches in these completions yet costs 24 % (0.76x).
DRAFT_MAX = 12
DRAFT_MIN = 0
DRAFT_P_MIN = 0.5
LOOKUP_N = 3
LOOKUP_M = 16


@dataclass
class LlamaCppConfig:
    target: Path                     # GGUF the server runs (-m)
    draft: Path | None = None        # GGUF of a draft model (-md, speculative decoding)
    prompt_lookup: bool = False      # llama.cpp's prompt lookup (--spec-type ngram-simple)
    draft_max: int = DRAFT_MAX       # --spec-draft-n-max: tokens the draft model proposes at most per round
    draft_min: int = DRAFT_MIN       # --spec-draft-n-min: a shorter draft is not verified at all
    draft_p_min: float = DRAFT_P_MIN  # --spec-draft-p-min: drafting stops at a token the draft is less sure of
    lookup_n: int = LOOKUP_N         # --spec-ngram-simple-size-n: length of the n-gram looked up
    lookup_m: int = LOOKUP_M         # --spec-ngram-simple-size-m: tokens proposed after a match
    threads: int = 2                 # both cores, for prompt reads and steps alike
    context: int = 4096              # room for any benchmark prompt plus its new tokens (default: the model's 32k)

    def server_arguments(self) -> list[str]:
        arguments = ["-m", str(self.target), "-t", str(self.threads), "-tb", str(self.threads),
                     "-c", str(self.context), "-np", "1", "--cache-ram", "0", "--no-webui"]
        if cpu_has("amx_int8"):
            # This build's AMX path for quantized weights (Q4_K, Q8_0 ...) crashes llama-server with SIGSEGV at
            # its first pass after "AMX model buffer" (ggml-org/llama.cpp#20824): keep weights in their file
            # layout there, llama.cpp's own switch and what its users do.
            arguments.append("--no-repack")
        if self.draft is not None and self.prompt_lookup:
            raise LlamaCppError("choose a draft GGUF or prompt lookup, not both")
        if self.draft is not None:
            arguments += ["-md", str(self.draft), "--spec-type", "draft-simple",
                          "--spec-draft-n-max", str(self.draft_max), "--spec-draft-n-min", str(self.draft_min),
                          "--spec-draft-p-min", str(self.draft_p_min)]
        elif self.prompt_lookup:
            arguments += ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(self.lookup_n),
                          "--spec-ngram-simple-size-m", str(self.lookup_m)]
        return arguments


@dataclass
class LlamaCppResult:
    tokens: list[int]     # generated ids, EOS included when generation stopped on it
    seconds: float        # wall time of the request: prompt read and generation
    drafted: int          # tokens proposed by the draft model or the lookup
    accepted: int         # of those, accepted by the target

    @property
    def target_steps(self) -> int:
        """Each target pass emits its accepted draft tokens plus one of its own."""
        return max(1, len(self.tokens) - self.accepted)


class LlamaCppEngine:
    """A llama-server process on a free local port for the engine's lifetime (use it as a context manager)."""

    def __init__(self, config: LlamaCppConfig, server: Path, start_seconds: float = 300.0):
        self.config = config
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
        self.process = subprocess.Popen([str(server), *config.server_arguments(), "--host", "127.0.0.1",
                                         "--port", str(self.port)],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready(start_seconds)

    def __enter__(self) -> "LlamaCppEngine":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> LlamaCppResult:
        """Greedy raw completion of `prompt_ids`, timed around the whole request."""
        request = {"prompt": list(prompt_ids), "n_predict": max_new_tokens, "temperature": 0.0, "top_k": 1,
                   "cache_prompt": False, "return_tokens": True, "stream": False, "stop": []}
        started = time.perf_counter()
        reply = self._post("/completion", request)
        seconds = time.perf_counter() - started
        timings = reply.get("timings", {})
        return LlamaCppResult(tokens=[int(t) for t in reply["tokens"]], seconds=seconds,
                              drafted=int(timings.get("draft_n", 0)), accepted=int(timings.get("draft_n_accepted", 0)))

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as response:
                return json.loads(response.read())
        except urllib.error.URLError as error:
            raise LlamaCppError(f"llama-server request {path} failed ({error}){self._log_tail()}") from None

    def _wait_ready(self, timeout: float) -> None:
        """Poll /health: 503 while the models load, 200 once the server takes requests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"llama-server exited with {self.process.returncode} while starting{self._log_tail()}"
                self.close()
                raise LlamaCppError(message)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        message = f"llama-server did not become ready in {timeout:.0f} s{self._log_tail()}"
        self.close()
        raise LlamaCppError(message)

    def _log_tail(self, lines: int = 15) -> str:
        path = Path(self.log.name)
        if not path.exists():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return ":\n" + "\n".join(tail) if tail else ""
