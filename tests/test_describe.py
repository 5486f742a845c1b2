"""`nanovlm data describe` against a real HTTP server speaking the OpenAI wire format, through the real `openai`
client: transport retries (429, 500, malformed JSON, slow answers), quality retries, failures reported, a killed
run resumed from the cache, nothing lost or duplicated, nothing overwritten."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from nanovlm.chat import ChatError, ChatSettings, Usage
from nanovlm.data.describe import (CACHE_FILE, FAILURES_FILE, DescribeConfig, check_description, describe_dataset,
                                   description_response_format, heldout_prompt)
from nanovlm.data.format import read_records, write_records
from openai_server import FakeChatServer

GOOD_SHORT = ("I see a big brown dog number {n}. The dog runs on the green grass. It has a red ball and it is very "
              "happy.")
TOO_LONG = " ".join(["I see a dog and a cat and a ball."] * 5)   # 50 words
HARD_WORDS = ("The juxtaposition of photosynthesis and epistemology illuminates a quintessential "
              "paradigm of heterogeneous ontological phenomenology in the contemporary zeitgeist of our days.")


def picture_number(messages) -> str:
    return re.search(r"picture number (\d+)", messages[0]["content"]).group(1)


def good_reply(messages, model):
    return GOOD_SHORT.format(n=picture_number(messages))


@pytest.fixture
def coco_like(tmp_path):
    """A small input dataset shaped like our COCO import: five captions per image in meta.captions."""
    folder = tmp_path / "coco"
    (folder / "images").mkdir(parents=True)
    records = []
    for n in range(12):
        Image.new("RGB", (8, 8), (20 * n, 0, 0)).save(folder / "images" / f"{n:03d}.png")
        captions = [f"A photo, picture number {n}, of a dog with a ball."]
        captions += [f"A dog playing, take {k}." for k in range(4)]
        records.append({"id": f"coco-{n}", "images": [f"images/{n:03d}.png"],
                        "texts": [{"user": "Describe the picture.", "assistant": captions[0]}],
                        "split": "test" if n % 4 == 0 else "train", "meta": {"coco_id": n, "captions": captions}})
    write_records(folder, records)
    return folder


def settings(server, **kw):
    defaults = dict(base_url=server.base_url, model="test-model", concurrency=3, max_retries=4, timeout_s=0.5,
                    backoff_s=0.01, backoff_max_s=0.05, price_per_million=(2.5, 10.0))
    return ChatSettings(**{**defaults, **kw})


def run(coco, out, server, **kw):
    chat_kw = {k: kw.pop(k) for k in list(kw) if k in ChatSettings.__dataclass_fields__}
    return describe_dataset(DescribeConfig(data=str(coco), out=str(out), style="short",
                                           chat=settings(server, **chat_kw), progress=False, **kw))


def assert_each_record_once(coco, out):
    described = {r["id"] for r in read_records(out)}
    failed = [json.loads(line)["id"] for line in (out / FAILURES_FILE).read_text().splitlines()]
    every = [r["id"] for r in read_records(coco)]
    assert len(described) + len(failed) == len(every) and described | set(failed) == set(every)
    return described, failed


# -----------------------------------------------------------------------------
# the checks

def test_word_count_and_vocabulary_checks_reject_bad_outputs():
    assert check_description(GOOD_SHORT.format(n=1), "short") == []
    assert "has 50 words but must have 20 to 25" in check_description(TOO_LONG, "short")[0]
    assert "has 25 words but must have 60 to 70" in check_description(GOOD_SHORT.format(n=1), "long")[0]
    assert check_description(GOOD_SHORT.format(n=1), "long", words=(20, 30)) == []   # another range asked for
    problems = check_description(HARD_WORDS, "short")
    assert len(problems) == 1 and "juxtaposition" in problems[0] and "photosynthesis" in problems[0]
    # inflected common words are simple ("eats", "giraffes" count as "eat", "giraffe")
    inflected = "The dogs eats the apples and plays with the balls. " * 2 + "The sun is up."
    assert check_description(inflected, "short") == []
    # one animal name a child knows but a word list ranks low is allowed by the default threshold
    assert check_description("I see a tall giraffe. It eats green leaves from a big tree. The sky is blue and the "
                             "sun is bright.", "short") == []


def test_heldout_prompts_are_the_first_6_7_or_18_20_words():
    long_text = " ".join(f"w{i}" for i in range(65))
    for key in map(str, range(30)):
        assert len(heldout_prompt(GOOD_SHORT, "short", key).split()) in (6, 7)
        assert len(heldout_prompt(long_text, "long", key).split()) in (18, 19, 20)
        assert heldout_prompt(GOOD_SHORT, "short", key) == heldout_prompt(GOOD_SHORT, "short", key)
    assert {len(heldout_prompt(long_text, "long", str(k)).split()) for k in range(60)} == {18, 19, 20}
    assert heldout_prompt("one two three four five", "short", "x") == "one two"   # 3 words left to write


# -----------------------------------------------------------------------------
# the endpoint misbehaves

def test_transport_errors_are_retried_with_the_real_client(coco_like, tmp_path):
    with FakeChatServer(reply=good_reply, slow_s=1.5) as server:
        server.faults.extend(["429", "500", "malformed", "slow", "empty_choices", "503"])
        summary = run(coco_like, tmp_path / "out", server)
        assert len(server.requests) == 12 + 6
    assert summary["described"] == 12 and summary["failed"] == 0
    assert summary["usage"]["retries"] == 6 and summary["usage"]["requests"] == 18
    described = read_records(tmp_path / "out")
    assert [r["id"] for r in described] == [f"coco-{n}" for n in range(12)]   # input order, each once
    for record in described:   # each description belongs to its own picture, not a neighbour's
        assert f"number {record['meta']['coco_id']}." in record["texts"][0]["assistant"]
        assert record["meta"]["describe"] == {"style": "short", "model": "test-model", "prompt": "describe-v1",
                                              "attempts": 1}
        assert (tmp_path / "out" / record["images"][0]).is_file()
    assert [r["split"] for r in described] == [r["split"] for r in read_records(coco_like)]
    usage = summary["usage"]
    assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 2.5 + usage["completion_tokens"] * 10) / 1e6)


def test_a_request_that_keeps_failing_is_reported_and_the_rest_carry_on(coco_like, tmp_path):
    with FakeChatServer(reply=good_reply) as server:
        server.faults.extend(["500"] * 5)    # the first record's 1 try + 4 retries
        summary = run(coco_like, tmp_path / "out", server, concurrency=1)
    assert summary["described"] == 11 and summary["failed"] == 1
    described, failed = assert_each_record_once(coco_like, tmp_path / "out")
    failure = json.loads((tmp_path / "out" / FAILURES_FILE).read_text())
    assert failed == ["coco-0"] and "gave up after 5 attempts" in failure["error"]


def test_a_refused_request_stops_the_run(coco_like, tmp_path):
    with FakeChatServer(reply=good_reply) as server:
        server.faults.append("401")
        with pytest.raises(ChatError, match="AuthenticationError"):
            run(coco_like, tmp_path / "out", server, concurrency=1)
        assert len(server.requests) == 1   # not retried: a wrong key stays wrong
    assert not (tmp_path / "out" / "records.jsonl").exists()


# -----------------------------------------------------------------------------
# the LLM's answers are not good enough

def test_bad_answers_are_retried_with_the_reason(coco_like, tmp_path):
    def reply(messages, model):   # too long at first; right once told why
        return TOO_LONG if len(messages) == 1 else good_reply(messages, model)

    with FakeChatServer(reply=reply) as server:
        summary = run(coco_like, tmp_path / "out", server)
        retry_turns = [r["messages"] for r in server.requests if len(r["messages"]) == 3]
    assert summary["described"] == 12 and len(retry_turns) == 12
    assert retry_turns[0][1] == {"role": "assistant", "content": TOO_LONG}
    assert "it has 50 words but must have 20 to 25" in retry_turns[0][2]["content"]
    assert {r["meta"]["describe"]["attempts"] for r in read_records(tmp_path / "out")} == {2}


def test_json_schema_asks_for_the_word_range_as_a_pattern_and_reads_the_json_answer(coco_like, tmp_path):
    with FakeChatServer(reply=lambda m, model: json.dumps({"description": good_reply(m, model)})) as server:
        summary = run(coco_like, tmp_path / "out", server, json_schema=True)
        formats = [r.get("response_format") for r in server.requests]
    assert summary["described"] == 12 and all(f == description_response_format("short") for f in formats)
    descriptions = [r["texts"][0]["assistant"] for r in read_records(tmp_path / "out")]
    assert all(d.startswith("I see a big brown dog number") for d in descriptions)   # the text, not the JSON
    pattern = re.compile(formats[0]["json_schema"]["schema"]["properties"]["description"]["pattern"])
    for n_words in (19, 20, 25, 26):
        text = " ".join(["dog,"] * n_words)
        assert bool(pattern.match(text)) == (20 <= n_words <= 25) == (not check_description(text, "short"))
    assert not pattern.match("two  spaces " * 10)      # one space between words
    glued = " ".join(["dog,"] * 21 + ["Eachperson'saflightingmachine."])
    assert not pattern.match(glued) and not pattern.match(" ".join(["{\"description\":"] + ["dog"] * 21))


def test_answers_that_never_pass_are_reported_not_lost(coco_like, tmp_path):
    def reply(messages, model):   # even pictures get hard words every time
        return HARD_WORDS if int(picture_number(messages)) % 2 == 0 else good_reply(messages, model)

    with FakeChatServer(reply=reply) as server:
        summary = run(coco_like, tmp_path / "out", server, quality_attempts=2)
    assert summary["described"] == 6 and summary["failed"] == 6
    described, failed = assert_each_record_once(coco_like, tmp_path / "out")
    assert failed == [f"coco-{n}" for n in range(0, 12, 2)]
    failure = json.loads((tmp_path / "out" / FAILURES_FILE).read_text().splitlines()[0])
    assert len(failure["rejected"]) == 2 and "juxtaposition" in failure["rejected"][0]["problems"][0]


# -----------------------------------------------------------------------------
# the cache, resuming and overwriting

def test_rerun_pays_nothing_and_never_overwrites_without_asking(coco_like, tmp_path):
    out = tmp_path / "out"
    with FakeChatServer(reply=good_reply) as server:
        run(coco_like, out, server)
        first = (out / "records.jsonl").read_bytes()
        with pytest.raises(FileExistsError, match="--overwrite"):
            run(coco_like, out, server)
        n = len(server.requests)
        summary = run(coco_like, out, server, overwrite=True)
        assert len(server.requests) == n and summary["from_cache"] == 12
        assert (out / "records.jsonl").read_bytes() == first
        # another model or style is another cache entry: asked again
        run(coco_like, tmp_path / "other", server, model="other-model", cache=str(out / CACHE_FILE))
        assert len(server.requests) == n + 12


def test_killed_run_resumes_from_the_cache_without_paying_twice(coco_like, tmp_path):
    out = tmp_path / "out"
    script = ("import sys; from nanovlm.chat import ChatSettings; "
              "from nanovlm.data.describe import DescribeConfig, describe_dataset; "
              "describe_dataset(DescribeConfig(data=sys.argv[1], out=sys.argv[2], progress=False, "
              "chat=ChatSettings(base_url=sys.argv[3], model='test-model', concurrency=2)))")
    with FakeChatServer(reply=good_reply, delay_s=0.15) as server:
        env = {**os.environ, "OPENAI_API_KEY": "test-key"}
        child = subprocess.Popen([sys.executable, "-c", script, str(coco_like), str(out), server.base_url], env=env)
        deadline = time.time() + 60
        while server.answered < 5 and time.time() < deadline and child.poll() is None:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert not (out / "records.jsonl").exists()   # killed before the end: nothing half-written
        time.sleep(0.5)            # a reply in flight at the kill may still be counted by the server's thread
        paid_before = server.answered
        assert 5 <= paid_before < 12
        server.delay_s = 0
        summary = run(coco_like, out, server)
        cached = summary["from_cache"]
        # the rerun asked only for what the cache did not hold; at most the requests in flight at the kill
        # (concurrency 2) were answered but not stored
        assert server.answered - paid_before == 12 - cached
        assert paid_before - 2 <= cached <= paid_before
    described, failed = assert_each_record_once(coco_like, out)
    assert len(described) == 12 and not failed


def test_usage_cost():
    usage = Usage()
    usage.add(prompt_tokens=1_000_000, completion_tokens=500_000, requests=1)
    assert usage.cost((2.5, 10.0)) == pytest.approx(7.5)
    assert usage.cost(None) is None
    assert ChatSettings(model="gpt-4o-mini").prices() == (0.15, 0.60)
    assert ChatSettings(model="my-local-llama").prices() is None
