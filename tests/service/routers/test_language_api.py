"""/v1/language endpoints and the `v1motion lm` CLI, with a tiny model written to a temp folder."""

import asyncio
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_helpers import random_engine

from v1motion.models.language.data import Vocabulary
from v1motion.models.language.rglm import LinearRecurrentLM
from v1motion.service.app import create_app
from v1motion.service.cli import main
from v1motion.service.settings import Settings

WORDS = ["<unk>", "<eos>", "the", "cat", "sat", "on", "mat", "n't", "do", "N"]


@pytest.fixture
def weights(tmp_path):
    model = LinearRecurrentLM(n_hidden=6, seed=4)
    model.vocab_ = Vocabulary(WORDS)
    rng = np.random.default_rng(0)
    model.params_ = {
        k: None if v is None else v + 0.3 * rng.standard_normal(v.shape).astype(np.float32)
        for k, v in model.init_params(len(WORDS)).items()
    }
    return model.save(tmp_path / "lm.npz")


@pytest.fixture
def client(weights):
    settings = Settings(lm_weights=weights, lm_max_chars=200, lm_max_k=5)
    # the random engine: the shipped one would still be loading (compiling) when a short test
    # ends, and the interpreter's exit under its compiling thread can abort
    with TestClient(create_app(settings, engine_factory=random_engine)) as c:
        yield c


def test_score_gives_surprisal_and_flags_unknown_words(client):
    r = client.post("/v1/language/score", json={"text": "The cat sat on the zebra."})
    assert r.status_code == 200, r.text
    body = r.json()
    toks = body["tokens"]
    assert [t["token"] for t in toks] == ["the", "cat", "sat", "on", "the", "zebra", "<eos>"]
    zebra = toks[5]
    assert zebra["unknown"] and zebra["word"] == "<unk>"
    assert body["n_unknown"] == 1
    bits = [t["surprisal_bits"] for t in toks]
    assert all(b > 0 for b in bits)
    assert body["perplexity"] == pytest.approx(2 ** (sum(bits) / len(bits)))
    assert body["bits_per_token"] == pytest.approx(math.log2(body["perplexity"]))


def test_next_returns_k_words_in_order_from_a_distribution(client):
    r = client.post("/v1/language/next", json={"context": "the cat", "k": 5})
    assert r.status_code == 200, r.text
    words = r.json()["words"]
    assert len(words) == 5
    probs = [w["probability"] for w in words]
    assert probs == sorted(probs, reverse=True)
    assert 0 < sum(probs) <= 1.0
    assert r.json()["context_tokens"] == ["the", "cat"]
    # all ten words: the whole distribution
    r = client.post("/v1/language/next", json={"context": "", "k": 5})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("path", "payload", "status", "detail"),
    [
        ("/v1/language/score", {"text": "x" * 201}, 413, "limit is 200"),
        ("/v1/language/score", {"text": "  ?! "}, 422, "no words"),
        ("/v1/language/score", {}, 422, "text"),
        ("/v1/language/score", {"text": 5}, 422, "string"),
        ("/v1/language/next", {"context": "the", "k": 0}, 422, "between 1 and 5"),
        ("/v1/language/next", {"context": "the", "k": 6}, 422, "between 1 and 5"),
        ("/v1/language/next", {"context": "the", "k": "many"}, 422, "integer"),
        ("/v1/language/next", {"context": "y" * 201}, 413, "context is 201 characters"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, path, payload, status, detail):
    r = client.post(path, json=payload)
    assert r.status_code == status
    assert detail in str(r.json()["detail"])


def test_missing_model_is_503_not_a_crash(client):
    client.app.state.services.language_scorer = None
    r = client.post("/v1/language/score", json={"text": "the cat"})
    assert r.status_code == 503
    assert "not loaded" in r.json()["detail"]


def test_settings_refuse_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="no language-model weights"):
        Settings(lm_weights=tmp_path / "nope.npz")


def test_cli_score(weights, capsys):
    assert (
        main(["lm", "score", "the cat sat on a zebra", "--model", str(weights), "--next", "3"]) == 0
    )
    out = capsys.readouterr().out
    assert "unknown -> <unk>" in out
    assert "perplexity" in out
    assert out.count("next:") == 3


def test_cli_refuses_a_negative_next_before_scoring(weights, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["lm", "score", "the cat", "--model", str(weights), "--next", "-3"])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert "argument --next: must be 0 or more, got -3" in captured.err
    assert "perplexity" not in captured.out  # nothing scored first


def test_shipped_default_model_serves_ptb_style_text():
    with TestClient(create_app(Settings())) as c:
        r = c.post("/v1/language/score", json={"text": "The stock market fell sharply on Monday."})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["n_unknown"] == 0
        assert body["perplexity"] < 200  # in-domain text; a uniform guess would be 10,000
        top = c.post("/v1/language/next", json={"context": "the stock", "k": 3}).json()["words"]
        assert "market" in [w["word"] for w in top]


def test_a_class_factorised_model_is_served_the_same_way(tmp_path):
    from v1motion.models.language.kernels import WordClasses

    model = LinearRecurrentLM(n_hidden=6, n_classes=3, seed=4)
    model.vocab_ = Vocabulary(WORDS)
    model.classes_ = WordClasses.from_counts(np.arange(len(WORDS), 0, -1.0), 3)
    rng = np.random.default_rng(0)
    model.params_ = {
        k: None if v is None else v + 0.3 * rng.standard_normal(v.shape).astype(np.float32)
        for k, v in model.init_params(len(WORDS), np.ones(len(WORDS))).items()
    }
    settings = Settings(lm_weights=model.save(tmp_path / "lm.npz"), lm_max_k=len(WORDS))
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/language/next", json={"context": "the cat", "k": len(WORDS)})
        assert r.status_code == 200, r.text
        words = r.json()["words"]
        assert len(words) == len(WORDS) - 1  # every word but <unk>
        p_unk = np.exp(model.next_word_log_probs(np.array([1, 2, 3]))[0])  # <eos> the cat
        total = sum(w["probability"] for w in words)
        assert total + p_unk == pytest.approx(1.0, abs=1e-5)
        r = c.post("/v1/language/score", json={"text": "the cat sat"})
        assert r.status_code == 200, r.text
        assert r.json()["perplexity"] > 1.0


def test_the_shipped_model_is_the_default_and_predicts_plausible_words():
    settings = Settings()
    assert settings.lm_weights.name == "lm_ptb_rglm.npz"
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/language/next", json={"context": "the stock market fell", "k": 5})
        assert r.status_code == 200, r.text
        words = [w["word"] for w in r.json()["words"]]
        assert "to" in words or "in" in words
        r = c.post("/v1/language/score", json={"text": "the company said it expects profit"})
        assert r.status_code == 200, r.text
        assert r.json()["perplexity"] < 1000  # a 10,000-word vocabulary: uniform would be 10,000


def test_next_never_suggests_unk_even_where_it_is_most_likely():
    with TestClient(create_app(Settings())) as c:
        scorer = c.app.state.services.language_scorer
        ids = scorer.vocab.encode(["<eos>", "the"]).astype(np.int64)
        logp = scorer.model.next_word_log_probs(ids)
        assert int(np.argmax(logp)) == scorer.vocab.unk_id  # the case the rule is for
        r = c.post("/v1/language/next", json={"context": "the", "k": 5})
        assert r.status_code == 200, r.text
        words = r.json()["words"]
        assert len(words) == 5 and "<unk>" not in [w["word"] for w in words]
        best = np.sort(np.delete(logp, scorer.vocab.unk_id))[::-1][:5]
        assert [w["probability"] for w in words] == pytest.approx(np.exp(best), rel=1e-5)


def test_wsj_abbreviations_and_percent_signs_are_read_as_ptb_has_them():
    """'Mr.' is the vocabulary's 'mr.', not the unknown 'mr' and the end of a sentence; '12%' is
    PTB's 'N N'."""
    with TestClient(create_app(Settings())) as c:
        r = c.post(
            "/v1/language/score",
            json={"text": "Mr. Smith of Apple Inc. said shares fell 12% on Nov. 29."},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert [t["token"] for t in body["tokens"]] == [
            "mr.", "smith", "of", "apple", "inc.", "said", "shares", "fell", "N", "N", "on",
            "nov.", "N", "<eos>",
        ]  # fmt: skip
        assert body["n_unknown"] == 0
        r = c.post("/v1/language/next", json={"context": "Mr.", "k": 3})
        assert r.json()["context_tokens"] == ["mr."]


def test_queued_slots_run_some_queue_some_and_refuse_the_rest():
    """45 long texts at once held every thread of the pool for 40 s, /healthz's included, and took
    700 MB: language work now runs one request per core, a bounded number wait, the rest get a 503."""
    from fastapi import HTTPException

    from v1motion.service.state import QueuedSlots

    async def scenario():
        slots = QueuedSlots(1, 1, "language requests")
        order, gate = [], asyncio.Event()

        async def work(name):
            async with slots.hold():
                order.append(name)
                await gate.wait()

        first = asyncio.create_task(work("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(work("second"))  # waits for the slot
        await asyncio.sleep(0)
        assert order == ["first"] and slots.queued == 1
        with pytest.raises(HTTPException) as refused:
            async with slots.hold():
                pass
        gate.set()
        await asyncio.gather(first, second)
        assert order == ["first", "second"] and slots.queued == 0
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers == {"Retry-After": "1"}
    assert refused.detail == "1 language requests running and 1 waiting; retry in 1 s"


def test_a_request_whose_client_left_is_not_worked_on_and_retry_after_counts_the_work_ahead():
    """Clients that time out and retry filled the queue with texts nobody read: after 18 such long
    texts a 6 ms request waited 29 s, and every 503 said Retry-After: 1."""
    from fastapi import HTTPException

    from v1motion.service.state import CLIENT_CLOSED, QueuedSlots

    class Client:
        def __init__(self, gone):
            self.gone = gone

        async def is_disconnected(self):
            return self.gone

    async def scenario():
        slots = QueuedSlots(1, 2, "language requests")
        worked, gate = [], asyncio.Event()

        async def work(name, gone=False):
            async with slots.hold(Client(gone)):
                worked.append(name)
                await gate.wait()

        first = asyncio.create_task(work("first"))
        await asyncio.sleep(0)
        left = asyncio.create_task(work("left", gone=True))
        last = asyncio.create_task(work("last"))
        await asyncio.sleep(0)
        assert slots.queued == 2
        slots.seconds_each = 4.0  # as measured on earlier requests
        with pytest.raises(HTTPException) as refused:
            async with slots.hold():
                pass
        gate.set()
        results = await asyncio.gather(first, left, last, return_exceptions=True)
        return worked, results, refused.value, slots

    worked, results, refused, slots = asyncio.run(scenario())
    assert worked == ["first", "last"]  # the one whose client left gave its slot back at once
    assert isinstance(results[1], HTTPException) and results[1].status_code == CLIENT_CLOSED
    # one running and two waiting, 4 s each on one slot: 12 s of work ahead
    assert refused.headers == {"Retry-After": "12"} and "retry in 12 s" in refused.detail
    assert 0 < slots.seconds_each < 4.0  # the quick pieces since moved the running mean down


def test_language_routes_wait_for_a_slot_and_say_when_there_is_none(client):
    from v1motion.service.state import QueuedSlots

    full = QueuedSlots(1, 0, "language requests")
    full._slots._value = 0  # its one slot taken, and no room to wait
    client.app.state.services.language_slots = full
    for path, body in (("score", {"text": "the cat"}), ("next", {"context": "the", "k": 2})):
        r = client.post(f"/v1/language/{path}", json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert client.get("/healthz").status_code == 200
