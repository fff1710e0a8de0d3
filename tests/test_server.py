"""`specqd serve` as clients use it: a real server process on 127.0.0.1, driven by the official openai client.

The server runs in f32 so that every request's greedy output can be compared token for token with the same
request run alone by the runtime (`Pipeline`, what `specqd generate` runs).
"""

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from specqd.server.process import running_server
from specqd.runtime.pipeline import Pipeline
from specqd.runtime.sampling import Sampling

CHAIN = "target,target-mxfp4,draft"
PROMPTS = ["def fibonacci(n: int) -> int:", "The quick brown fox jumps over", "import numpy as np\n",
           "class Stack:\n    def push(self, item):", "for i in range(10):", "Hello", "def add(a, b):\n    return",
           "# Sort a list of numbers\n"]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def server(tiny_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    # The draft budget is off so that every request drafts, whatever the batch: exactness is tested under
    # speculation (on tiny models the measured budget would often choose plain batched decoding).
    with running_server(tiny_export, "--precision", "f32", "--chain", CHAIN, "--max-batch", "8",
                        "--per-request-metrics", "--draft-budget", "off", log=log) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def alone(tiny_export):
    """The same request run alone by the runtime, in f32: (text, tokens, finish_reason)."""
    pipelines = {}

    def run(prompt, max_tokens, chain=CHAIN, stop=(), sampling=Sampling()):
        pipe = pipelines.setdefault(chain, Pipeline.load(tiny_export, chain=chain, precision="f32"))
        result = pipe.generate(prompt, max_new_tokens=max_tokens, stop=tuple(stop), sampling=sampling)
        return result.text, result.tokens, result.finish_reason
    return run


def streamed(client, **request):
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **request))
    return chunks, "".join(choice.text for chunk in chunks for choice in chunk.choices)


def test_a_completion_is_the_targets_own_greedy_text_with_its_usage(client, server, alone):
    answer = client.completions.create(model="export", prompt=PROMPTS[0], max_tokens=20, **GREEDY)
    text, tokens, reason = alone(PROMPTS[0], 20)
    assert answer.choices[0].text == text and answer.choices[0].finish_reason == reason == "length"
    prompt_tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": PROMPTS[0]}).json()["count"]
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt_tokens, len(tokens))
    assert answer.usage.total_tokens == prompt_tokens + len(tokens)
    assert answer.model == "export" and answer.id.startswith("cmpl-") and answer.created > 0


def test_streamed_chunks_join_to_the_whole_text_and_end_with_usage(client):
    whole = client.completions.create(model="export", prompt=PROMPTS[1], max_tokens=24, **GREEDY)
    chunks, text = streamed(client, model="export", prompt=PROMPTS[1], max_tokens=24, **GREEDY)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_every_chain_serves_the_same_greedy_tokens(client, alone):
    text, _, _ = alone(PROMPTS[2], 20)
    for chain in ("target", "target,draft", "target,lookup", "target,target-int8,draft,lookup"):
        answer = client.completions.create(model="export", prompt=PROMPTS[2], max_tokens=20,
                                           extra_body={"speculative": {"chain": chain}}, **GREEDY)
        assert answer.choices[0].text == text, chain
    answer = client.completions.create(model="export", prompt=PROMPTS[2], max_tokens=20, **GREEDY,
                                       extra_body={"num_assistant_tokens": 2, "assistant_confidence_threshold": 0.3,
                                                   "speculative": {"k": {"draft": 1}}})
    assert answer.choices[0].text == text


def test_token_id_prompts_and_several_prompts_are_answered_in_order(client, alone, server):
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": PROMPTS[3]}).json()["tokens"]
    answer = client.completions.create(model="export", prompt=[PROMPTS[0], PROMPTS[3]], max_tokens=10, **GREEDY)
    by_ids = client.completions.create(model="export", prompt=ids, max_tokens=10, **GREEDY)
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.text for c in answer.choices] == [alone(PROMPTS[0], 10)[0], alone(PROMPTS[3], 10)[0]]
    assert by_ids.choices[0].text == answer.choices[1].text
    assert httpx.post(f"{server.url}/detokenize", json={"tokens": ids}).json() == {"prompt": PROMPTS[3]}


def test_chat_uses_the_models_template_streamed_or_not(client, server, alone, tiny_export):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a loop."},
                {"role": "assistant", "content": "for i in x:"}, {"role": "user", "content": "Another."}]
    answer = client.chat.completions.create(model="export", messages=messages, max_tokens=16, **GREEDY)
    prompt = Pipeline.load(tiny_export, chain="target").folder.apply_chat_template(messages)
    assert answer.choices[0].message.content == alone(prompt, 16)[0]
    assert answer.choices[0].message.role == "assistant" and answer.id.startswith("chatcmpl-")
    chunks = list(client.chat.completions.create(model="export", messages=messages, max_tokens=16, stream=True,
                                                 **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.choices[0].message.content
    counted = httpx.post(f"{server.url}/tokenize", json={"messages": messages}).json()["count"]
    assert answer.usage.prompt_tokens == counted


def test_a_stop_string_ends_the_text_and_never_streams_its_start(client, alone):
    full, _, _ = alone(PROMPTS[0], 30)
    stop = full[12:16]
    answer = client.completions.create(model="export", prompt=PROMPTS[0], max_tokens=30, stop=[stop, "\x00"],
                                       **GREEDY)
    assert answer.choices[0].text == full[:full.find(stop)] and answer.choices[0].finish_reason == "stop"
    _, text = streamed(client, model="export", prompt=PROMPTS[0], max_tokens=30, stop=stop, **GREEDY)
    assert text == answer.choices[0].text


def test_eight_concurrent_requests_each_get_their_solo_output(client, alone, server):
    """Different prompt lengths, max_tokens and stop points; all in one batch, each equal to its solo run."""
    requests = []
    for i, prompt in enumerate(PROMPTS):
        full = alone(prompt, 12 + 3 * i)[0]
        stop = [full[8:11]] if i % 3 == 0 and len(full) > 11 else []
        requests.append({"prompt": prompt, "max_tokens": 12 + 3 * i, "stop": stop or None})
    passes_before = server.metric("specqd:level_forward_passes_total", level="target")
    barrier = threading.Barrier(len(requests))

    def send(request):
        barrier.wait()
        return client.completions.create(model="export", **request, **GREEDY).choices[0]

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(send, requests))
    for request, answer in zip(requests, answers):
        text, _, reason = alone(request["prompt"], request["max_tokens"], stop=request["stop"] or ())
        assert (answer.text, answer.finish_reason) == (text, reason), request
    solo_passes = sum(len(alone(r["prompt"], r["max_tokens"])[1]) for r in requests)  # an upper bound alone
    assert server.metric("specqd:level_forward_passes_total", level="target") - passes_before < solo_passes
    assert server.metric("specqd:spec_decode_num_accepted_tokens_total") > 0


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch(client):
    request = {"model": "export", "prompt": PROMPTS[4], "max_tokens": 16, "temperature": 0.9, "top_p": 0.95,
               "seed": 1234}
    first = client.completions.create(**request).choices[0].text
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(client.completions.create, model="export", prompt=p, max_tokens=24, temperature=1.0)
                  for p in PROMPTS[:3]]
        batched = client.completions.create(**request).choices[0].text
        [other.result() for other in others]
    assert batched == first


@pytest.mark.parametrize("request_, param", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 2}, "n=2"),
    ({"logprobs": 3}, "logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"stop": [""]}, "stop"),
    ({"extra_body": {"stream_options": {"include_usage": True}}}, "stream_options"),
    ({"extra_body": {"speculative": {"chain": "target,nonesuch"}}}, "nonesuch"),
    ({"extra_body": {"speculative": {"k": {"nonesuch": 3}}}}, "nonesuch"),
    ({"extra_body": {"guided_json": {}}}, "guided_json"),
])
def test_invalid_fields_get_a_400_that_names_them(client, request_, param):
    body = {"model": "export", "prompt": "hi", "max_tokens": 4} | request_
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**body)
    assert caught.value.status_code == 400 and param in caught.value.body["message"]


def test_chat_input_errors_are_400s(client):
    for messages, text in (([], "messages"), ([{"role": "robot", "content": "hi"}], "robot")):
        with pytest.raises(openai.BadRequestError, match=text):
            client.chat.completions.create(model="export", messages=messages)
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model="export", messages=[{"role": "user", "content": "hi"}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])


def test_unknown_model_context_overflow_and_bad_json(client, server):
    with pytest.raises(openai.NotFoundError, match="nonesuch"):
        client.completions.create(model="nonesuch", prompt="hi", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512") as caught:
        client.completions.create(model="export", prompt="word " * 400, max_tokens=200)
    assert caught.value.body["code"] == "context_length_exceeded"
    response = httpx.post(f"{server.url}/v1/completions", content=b"{not json", timeout=10,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_a_disconnected_stream_frees_its_place_and_kv_blocks(client, server):
    stream = client.completions.create(model="export", prompt=PROMPTS[0], max_tokens=400, stream=True, **GREEDY)
    for _, _ in zip(stream, range(2)):
        pass
    stream.close()
    deadline = time.monotonic() + 30
    while server.metric("specqd:num_requests_running") or server.metric("specqd:kv_cache_blocks_used"):
        assert time.monotonic() < deadline, "the disconnected request still holds its place"
        time.sleep(0.2)
    assert server.metric("specqd:request_success_total", finished_reason="abort") >= 1


def test_metrics_follow_vllms_names_and_reconcile_with_responses(client, server):
    names = ["specqd:spec_decode_num_drafts_total", "specqd:spec_decode_num_draft_tokens_total",
             "specqd:spec_decode_num_accepted_tokens_total"]
    before = [server.metric(name) for name in names]
    pair_before = server.metric("specqd:spec_decode_level_num_draft_tokens_total", drafter="draft",
                                verifier="target-mxfp4")
    answer = client.completions.create(model="export", prompt=PROMPTS[5], max_tokens=24, **GREEDY)
    speculative = answer.model_extra["metrics"]["speculative_decoding"]
    after = [server.metric(name) for name in names]
    assert [a - b for a, b in zip(after, before)] == [speculative["num_spec_steps"], speculative["num_draft_tokens"],
                                                       speculative["num_accepted_draft_tokens"]]
    assert speculative["num_draft_tokens"] > 0
    levels = {level["level"]: level for level in answer.model_extra["metrics"]["levels"]}
    assert server.metric("specqd:spec_decode_level_num_draft_tokens_total", drafter="draft",
                         verifier="target-mxfp4") - pair_before == levels["draft"]["drafted"]
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("specqd:time_to_first_token_seconds_bucket", "specqd:inter_token_latency_seconds_bucket",
                 "specqd:e2e_request_latency_seconds_bucket", "specqd:request_queue_time_seconds_bucket",
                 "specqd:prompt_tokens_total", "specqd:generation_tokens_total",
                 "specqd:spec_decode_num_accepted_tokens_per_pos_total", "specqd:kv_cache_blocks_free",
                 "specqd:level_seconds_total", "specqd:level_tokens_computed_total", "specqd:num_requests_waiting"):
        assert name in text, name


def test_a_bounded_soak_ends_with_no_failure_and_every_kv_block_free(client, server):
    count, deadline = 40, time.monotonic() + 240

    def send(i):
        request = {"model": "export", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 4 + i % 13}
        if i % 2:
            return "".join(c.choices[0].text for c in client.completions.create(stream=True, **request, **GREEDY)
                           if c.choices)
        return client.completions.create(**request, temperature=0.8, seed=i).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(count)))
    assert time.monotonic() < deadline and len(results) == count
    assert server.metric("specqd:kv_cache_blocks_used") == 0 and server.metric("specqd:num_requests_running") == 0
    assert server.metric("specqd:request_success_total", finished_reason="error") == 0
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_the_api_key_and_the_bounded_queue(tiny_export, tmp_path):
    with running_server(tiny_export, "--chain", "target", "--api-key", "sesame", "--max-batch", "1",
                        "--max-queue", "1", log=tmp_path / "server.log") as server:
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").completions.create(model="export", prompt="hi", max_tokens=2)
        client = server.client("sesame")
        assert client.models.list().data[0].id == "export"
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.completions.create, model="export", prompt=PROMPTS[0], max_tokens=200)
                       for _ in range(6)]
            outcomes = [future.exception() for future in futures]
        refused = [error for error in outcomes if error is not None]
        assert refused and all(isinstance(error, openai.RateLimitError) for error in refused)
        assert len(refused) < 6
        assert json.loads(httpx.get(f"{server.url}/health").text) == {"status": "ok"}


def test_a_level_that_fails_to_load_fails_only_its_request(tiny_export, tmp_path):
    """A real fault inside the engine: the draft's weights are cut short on disk, so loading it fails when a
    request first asks for it. That request gets a 500 naming the failure; the server serves the next one."""
    broken = tmp_path / "export"
    shutil.copytree(tiny_export, broken)
    weights = broken / "draft" / "openvino_model.bin"
    weights.write_bytes(weights.read_bytes()[:100])
    with running_server(broken, "--precision", "f32", "--chain", "target", log=tmp_path / "server.log") as server:
        client = server.client()
        with pytest.raises(openai.InternalServerError, match="the engine failed loading the chain's models"):
            client.completions.create(model="export", prompt=PROMPTS[0], max_tokens=4,
                                      extra_body={"speculative": {"chain": "target,draft"}})
        answer = client.completions.create(model="export", prompt=PROMPTS[0], max_tokens=4, **GREEDY)
        assert answer.usage.completion_tokens == 4
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
        assert server.metric("specqd:request_success_total", finished_reason="error") == 1


def test_with_the_draft_budget_on_concurrent_requests_still_get_their_solo_tokens(tiny_export, alone, tmp_path):
    """The budget only changes how many tokens each request drafts per round, never which tokens it keeps.
    Prompt lookup is the drafter here because its proposals cost no pass: with the tiny models, whose passes
    take less than a millisecond, a model drafter never pays for itself and the budget rightly drafts nothing."""
    chain = "target,lookup"
    with running_server(tiny_export, "--precision", "f32", "--chain", chain, log=tmp_path / "server.log") as server:
        client = server.client()
        jobs = [(PROMPTS[i], 8 + 5 * i) for i in range(6)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda job: client.completions.create(
                model="export", prompt=job[0], max_tokens=job[1], **GREEDY).choices[0].text, jobs))
        assert answers == [alone(prompt, tokens, chain=chain)[0] for prompt, tokens in jobs]
        assert server.metric("specqd:spec_decode_num_draft_tokens_total") > 0


def test_long_prompts_read_in_chunks_beside_running_requests_change_no_token(tiny_export, alone, tmp_path):
    """With a 4-token prefill chunk every prompt here is read over several engine turns, by the target and by
    the draft that reads prompts itself, while the other requests keep generating."""
    with running_server(tiny_export, "--precision", "f32", "--chain", CHAIN, "--prefill-chunk", "4",
                        "--draft-budget", "off", log=tmp_path / "server.log") as server:
        client = server.client()
        jobs = [(PROMPTS[i] * 3, 10 + 3 * i) for i in range(5)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda job: client.completions.create(
                model="export", prompt=job[0], max_tokens=job[1], **GREEDY).choices[0].text, jobs))
        assert answers == [alone(prompt, tokens)[0] for prompt, tokens in jobs]
        assert server.metric("specqd:kv_cache_blocks_used") == 0
