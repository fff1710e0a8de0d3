"""`specqd serve --replicas 2` on a local Ray instance: two replicas of one thread each on the tiny models,
driven by the official openai client through Ray Serve's proxy on 127.0.0.1.

The replicas run in f32 with greedy decoding, so every answer must equal the single-process server's. The
module shares one deployment; the replica-kill test and the broken-folder test change it and come last.
"""

import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'specqd[ray]'")
from ray import serve  # noqa: E402

from specqd.runtime.cli import parser  # noqa: E402
from specqd.runtime.generation import GenerationError  # noqa: E402
from specqd.server.process import free_port, running_server  # noqa: E402
from specqd.server.ray_deploy import deploy, start_ray  # noqa: E402
from specqd.server.ray_metrics import REPORT_SECONDS, STALE_SECONDS  # noqa: E402
from specqd.server.ray_proxy import OpenAIErrors  # noqa: E402

OPTIONS = ["--precision", "f32", "--chain", "target,target-mxfp4,draft", "--draft-budget", "off"]
PROMPTS = ["def fibonacci(n: int) -> int:", "The quick brown fox jumps over", "import numpy as np\n",
           "class Stack:\n    def push(self, item):", "for i in range(10):", "Hello"]
LONG = [{"prompt": PROMPTS[i], "max_tokens": 400, "stream": i < 2} for i in range(4)]  # long enough to kill mid-way
REQUESTS = [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 6 + i % 5, "stream": i % 3 == 0} for i in range(12)]


def ray_args(export, *options: str):
    """What `specqd serve EXPORT --replicas 2 --threads-per-replica 1 ...` parses to."""
    return parser().parse_args(["serve", str(export), "--host", "127.0.0.1", "--port", str(free_port()),
                                "--replicas", "2", "--threads-per-replica", "1", *OPTIONS, *options])


@pytest.fixture(scope="module")
def url(tiny_export):
    start_ray(num_cpus=2, include_dashboard=False)
    try:
        # --max-batch 2: a replica takes two requests at a time, so four concurrent requests need both replicas.
        yield deploy(ray_args(tiny_export, "--max-batch", "2"))
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def single_process(tiny_export, tmp_path_factory):
    """Each request's text from the single-process server (`specqd serve` without Ray), same options."""
    with running_server(tiny_export, *OPTIONS, log=tmp_path_factory.mktemp("single") / "server.log") as server:
        single = server.client()
        yield {(r["prompt"], r["max_tokens"]): single.completions.create(
            model="export", prompt=r["prompt"], max_tokens=r["max_tokens"], temperature=0).choices[0].text
            for r in REQUESTS + LONG}


def complete(client, request) -> tuple[str, str]:
    """(replica, text) of one greedy completion, streamed or not."""
    body = {"model": "export", "prompt": request["prompt"], "max_tokens": request["max_tokens"], "temperature": 0}
    if request["stream"]:
        with client.completions.with_streaming_response.create(stream=True, **body) as response:
            text = "".join(chunk.choices[0].text for chunk in response.parse() if chunk.choices)
            return response.headers["x-specqd-replica"], text
    response = client.completions.with_raw_response.create(**body)
    return response.headers["x-specqd-replica"], response.parse().choices[0].text


def pid(replica: str) -> int:
    """x-specqd-replica is REPLICA_ID@HOST:PID."""
    return int(replica.rsplit(":", 1)[1])


def thread_masks(process: int) -> set[frozenset[int]]:
    """The distinct CPU affinity masks of a process's threads."""
    masks = set()
    for thread in os.listdir(f"/proc/{process}/task"):
        try:
            masks.add(frozenset(os.sched_getaffinity(int(thread))))
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    return masks


def successes(url: str) -> dict[str, float]:
    """Finished requests by replica, from /metrics."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "specqd:request_success_total":
                replica = sample.labels["replica"]
                counts[replica] = counts.get(replica, 0) + sample.value
    return counts


def test_the_command_serves_through_ray_and_its_sigterm_stops_every_replica(tiny_export, tmp_path):
    """`specqd serve --replicas 1` as a process (it starts its own local Ray); first in the module, so that
    the module's Ray instance is not running beside it."""
    with running_server(tiny_export, "--replicas", "1", "--threads-per-replica", "1", "--chain", "target",
                        log=tmp_path / "server.log") as server:
        answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
        replica = pid(answer.headers["x-specqd-replica"])
    deadline = time.monotonic() + 20  # running_server sent SIGTERM and saw the server exit
    while os.path.exists(f"/proc/{replica}"):
        assert time.monotonic() < deadline, "the replica outlived the server"
        time.sleep(0.5)


def test_both_replicas_answer_each_with_the_single_process_servers_text(client, single_process):
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda request: complete(client, request), REQUESTS))
    for request, (_, text) in zip(REQUESTS, answers):
        assert text == single_process[(request["prompt"], request["max_tokens"])], request
    replicas = {replica for replica, _ in answers}
    assert len(replicas) == 2


def test_each_replica_is_pinned_to_a_core_of_its_own(client):
    replicas = set()
    with ThreadPoolExecutor(4) as pool:
        for replica, _ in pool.map(lambda request: complete(client, request), REQUESTS[:8]):
            replicas.add(replica)
    masks = [thread_masks(pid(replica)) for replica in replicas]  # every thread's, OpenVINO's included
    assert len(masks) == 2 and all(len(mask) == 1 and len(next(iter(mask))) == 1 for mask in masks)
    assert masks[0] != masks[1]


def test_metrics_count_every_replica_whichever_answers_the_scrape(client, url):
    time.sleep(2 * REPORT_SECONDS)  # every replica has reported the previous test's requests
    before = sum(successes(url).values())
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda request: complete(client, request), REQUESTS))
    deadline = time.monotonic() + 10
    while sum(successes(url).values()) - before < len(REQUESTS):  # replicas report every second
        assert time.monotonic() < deadline, successes(url)
        time.sleep(0.5)
    time.sleep(2 * REPORT_SECONDS)
    assert sum(successes(url).values()) - before == len(REQUESTS)
    scrapes = [successes(url) for _ in range(6)]  # answered by either replica, as the proxy picks
    assert len(scrapes[0]) == 2 and all(scrape == scrapes[0] for scrape in scrapes)


def test_the_proxy_answers_its_own_errors_in_openai_shape():
    """Ray's proxy answers back-pressure in plain text, a dead replica's request with nothing, and cuts a dead
    replica's stream short; ray_proxy.OpenAIErrors, which Ray runs in its proxy, turns each into OpenAI's shape."""
    async def plain_503(scope, receive, send):
        await PlainTextResponse("Request dropped due to backpressure", 503)(scope, receive, send)

    async def nothing(scope, receive, send):
        pass

    async def cut_stream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"choices": []}\n\n', "more_body": True})

    busy = TestClient(OpenAIErrors(plain_503)).post("/v1/completions")
    assert busy.status_code == 503 and busy.json()["error"]["type"] == "service_unavailable"
    assert "backpressure" in busy.json()["error"]["message"] and "--max-queue" in busy.json()["error"]["message"]
    lost = TestClient(OpenAIErrors(nothing)).post("/v1/completions")
    assert lost.status_code == 500 and "replica serving this request stopped" in lost.json()["error"]["message"]
    cut = TestClient(OpenAIErrors(cut_stream)).post("/v1/completions")
    events = [line.removeprefix("data: ") for line in cut.text.splitlines() if line]
    assert events[0] == '{"choices": []}' and events[-1] == "[DONE]"
    assert "replica serving this request stopped" in json.loads(events[-2])["error"]["message"]


def test_a_killed_replica_fails_only_its_requests_in_openai_shape_and_is_replaced(client, url, single_process):
    """Four long requests fill both replicas (two places each); one replica is killed by its PID mid-answer.
    Its two requests fail with OpenAI-shaped errors, a JSON 500 or, once streaming, an error event; the other
    replica's two complete; Ray starts a replacement that answers like the rest, and /metrics forgets the dead one."""
    running = threading.Barrier(3)  # the two streams have their first chunk, and the test thread
    streaming_on: list[str] = []

    def send(request):
        try:
            if not request["stream"]:
                return "ok", complete(client, request)[1]
            body = {"model": "export", "prompt": request["prompt"], "max_tokens": request["max_tokens"],
                    "temperature": 0}
            with client.completions.with_streaming_response.create(stream=True, **body) as response:
                chunks = response.parse()
                text = next(iter(chunks)).choices[0].text
                streaming_on.append(response.headers["x-specqd-replica"])
                running.wait()
                return "ok", text + "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
        except openai.APIError as error:
            return type(error), error.message

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(send, request) for request in LONG]
        running.wait(timeout=60)
        time.sleep(0.5)  # the unstreamed two are admitted too
        victim = streaming_on[0]
        os.kill(pid(victim), signal.SIGKILL)
        outcomes = [future.result() for future in futures]
    finished = [(request, text) for request, (kind, text) in zip(LONG, outcomes) if kind == "ok"]
    failed = [(request, kind, message) for request, (kind, message) in zip(LONG, outcomes) if kind != "ok"]
    assert len(finished) == 2 and len(failed) == 2, outcomes
    for request, text in finished:
        assert text == single_process[(request["prompt"], request["max_tokens"])]
    for request, kind, message in failed:
        assert kind is (openai.APIError if request["stream"] else openai.InternalServerError), (kind, request)
        assert "replica serving this request stopped" in message

    deadline = time.monotonic() + 90
    while True:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda request: complete(client, request), REQUESTS[:8]))
        for request, (_, text) in zip(REQUESTS, answers):
            assert text == single_process[(request["prompt"], request["max_tokens"])]
        replicas = {replica for replica, _ in answers}
        if len(replicas) == 2 and victim not in replicas:
            break
        assert time.monotonic() < deadline, f"no replacement replica answered: {replicas}"
        time.sleep(2)
    cores = {frozenset(os.sched_getaffinity(pid(replica))) for replica in replicas}
    assert len(cores) == 2, "the replacement shares the surviving replica's core instead of taking the dead one's"
    deadline = time.monotonic() + 3 * STALE_SECONDS
    while set(successes(url)) != replicas:  # the dead replica's metrics leave once stale
        assert time.monotonic() < deadline, successes(url)
        time.sleep(1)


def test_a_folder_that_fails_to_load_fails_the_deploy_with_its_error(tiny_export, url, tmp_path):
    """Runs last: it replaces the module's deployment."""
    broken = tmp_path / "export"
    shutil.copytree(tiny_export, broken)
    weights = broken / "target" / "openvino_model.bin"
    weights.write_bytes(weights.read_bytes()[:100])
    started = time.monotonic()
    with pytest.raises(GenerationError, match="the replicas failed to start: RuntimeError: Exception from ") as caught:
        deploy(ray_args(broken))
    assert time.monotonic() - started < 60 and "Incorrect weights in bin file" in str(caught.value)
