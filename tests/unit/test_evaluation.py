"""Evaluation library: local evaluate metric modules (offline, equal to rouge_score / sacrebleu), generation
(batched = one by one, prompt tuning included), forgetting, reward model and LLM judge (a local HTTP server)."""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sacrebleu
import torch
from omegaconf import OmegaConf
from rouge_score import rouge_scorer

from src import data, models, specs
from src.config import ConfigError, validate
from src.config.evaluation import JUDGE_TEMPLATE
from src.data.render import render_prompt, render_response, shortened_prompt, token_ids
from src.data.splits import load_splits
from src.evaluation import forgetting, generation, judge, reward, scoring, task_metrics
from tests.helpers import SESSION_CACHE, TableRecorder, apply_method, compose_cfg, load_base

PREDS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "hello world",
    "running dogs ran",
]
REFS = [
    "the cat is on the mat",
    "the quick brown fox jumped over a lazy dog",
    "hello there world",
    "the dog runs",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread than on two contended ones (shared CI cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- metric modules


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a non-local connection fails, as it does on an offline machine."""
    real, attempts = socket.socket.connect, []

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1"):
            attempts.append(address)
            raise OSError(f"network disabled in this test ({address})")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_metric_modules_load_by_path_offline(no_network):
    import evaluate

    for name in ("rouge", "bleu", "accuracy"):
        module = evaluate.load(str(task_metrics.METRIC_DIR / name), keep_in_memory=True)  # the directory
        assert module.name == name
        assert (
            evaluate.load(str(task_metrics.METRIC_DIR / name / f"{name}.py"), keep_in_memory=True).name
            == name
        )  # the file
    scores = task_metrics.compute_metrics(["rouge", "bleu", "accuracy"], PREDS, REFS)  # and compute offline
    assert set(scores) == {"test/rouge1", "test/rouge2", "test/rougeL", "test/bleu", "test/accuracy"}
    assert scores["test/accuracy"] == 0.0 and 0 < scores["test/rouge1"] < 1 and 0 < scores["test/bleu"] < 1
    assert no_network == []  # not even an attempt to reach the Hub


def test_rouge_equals_rouge_score():
    # Hand-computed: 5 of 6 unigrams shared -> 5/6; 3 of 5 bigrams -> 3/5.
    got = task_metrics.load_metric("rouge").compute(
        predictions=PREDS[:1], references=REFS[:1], rouge_types=["rouge1", "rouge2"]
    )
    assert got["rouge1"] == pytest.approx(5 / 6) and got["rouge2"] == pytest.approx(3 / 5)
    for stem in (False, True):
        types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=stem)
        want = {
            t: sum(scorer.score(r, p)[t].fmeasure for p, r in zip(PREDS, REFS, strict=True)) / len(PREDS)
            for t in types
        }
        got = task_metrics.load_metric("rouge").compute(
            predictions=PREDS, references=REFS, rouge_types=types, use_stemmer=stem
        )
        assert got == pytest.approx(want, abs=1e-12)
    multi = [[r, "the cat sat"] for r in REFS]
    want = sum(scorer.score_multi(m, p)["rougeL"].fmeasure for p, m in zip(PREDS, multi, strict=True)) / len(
        PREDS
    )
    got = task_metrics.load_metric("rouge").compute(
        predictions=PREDS, references=multi, rouge_types=["rougeL"], use_stemmer=True
    )
    assert got["rougeL"] == pytest.approx(want, abs=1e-12)


def test_bleu_equals_sacrebleu():
    got = task_metrics.load_metric("bleu").compute(predictions=PREDS, references=REFS)
    want = sacrebleu.corpus_bleu(PREDS, [REFS])
    assert got["bleu"] == pytest.approx(want.score / 100, abs=1e-12)
    assert got["brevity_penalty"] == pytest.approx(want.bp) and got["precisions"] == pytest.approx(
        [p / 100 for p in want.precisions]
    )
    # Several references, different numbers per prediction (E2E): sacrebleu with None-padded streams.
    multi = [[REFS[0], "a cat sat on a mat"], [REFS[1]], [REFS[2], "hello world", "hi world"], [REFS[3]]]
    streams = [[m[i] if i < len(m) else None for m in multi] for i in range(3)]
    got = task_metrics.load_metric("bleu").compute(predictions=PREDS, references=multi, lowercase=True)
    assert got["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(PREDS, streams, lowercase=True).score / 100, abs=1e-12
    )
    assert task_metrics.load_metric("bleu").compute(predictions=REFS, references=REFS)[
        "bleu"
    ] == pytest.approx(1.0)


def test_accuracy_on_known_labels():
    preds, refs = (
        ["Positive", " negative\nbecause it is bad", "neutral"],
        ["positive", "negative", "positive"],
    )
    acc = task_metrics.load_metric("accuracy")
    assert acc.compute(predictions=preds, references=refs)["accuracy"] == pytest.approx(2 / 3)
    assert (
        acc.compute(predictions=preds, references=refs, normalize=False, first_line=False)["accuracy"] == 0.0
    )
    assert acc.compute(predictions=["b"], references=[["a", "B"]])["accuracy"] == 1.0


def test_compute_metrics_names_and_prefix():
    e2e = task_metrics.compute_metrics(
        ["bleu", "rougeL"], PREDS, [REFS[0], [REFS[1], "x"], REFS[2], REFS[3]], prefix="test"
    )
    assert set(e2e) == {"test/bleu", "test/rougeL"}
    summ = task_metrics.compute_metrics(["rouge"], PREDS, REFS, metric_args={"rouge": {"use_stemmer": True}})
    assert set(summ) == {"test/rouge1", "test/rouge2", "test/rougeL"}
    assert task_metrics.compute_metrics(["accuracy"], ["a"], ["A"], prefix="eval") == {"eval/accuracy": 1.0}
    assert task_metrics.compute_metrics([], PREDS, REFS) == {}
    with pytest.raises(ConfigError, match="unknown metric 'meteor'"):
        task_metrics.compute_metrics(["meteor"], PREDS, REFS)


# --------------------------------------------------------------------------- config


def metric_names(*overrides: str) -> tuple[str, ...]:
    """The text metrics a run with these overrides scores its generations with."""
    return specs.of(validate(compose_cfg(*overrides))).text_metrics


def test_eval_config_keys_and_validation():
    cfg = compose_cfg()
    assert cfg.eval.num_samples == 8 and cfg.eval.generation.do_sample is False
    assert cfg.eval.reward_model is None and cfg.eval.judge is None and cfg.eval.forgetting is True
    validate(cfg)
    assert metric_names("++data.metrics=[bleu,rougeL]") == ("bleu", "rougeL")
    assert metric_names("++data.metrics=[bleu]", "eval.metrics=[accuracy]") == ("accuracy",)
    assert compose_cfg("eval.judge=api:gpt-4o-mini").eval.judge == "api:gpt-4o-mini"
    bad = {
        "eval.num_samples=-1": "eval.num_samples",
        "eval.generation.max_new_tokens=0": "eval.generation.max_new_tokens",
        "+eval.generation.beams=2": "eval.generation.beams: unknown key",
        "eval.metrics=[meteor]": re.escape(
            "eval.metrics=['meteor']: must be a list of metric names from rouge,"
        ),
        "eval.forgetting_text=/nonexistent.txt": "eval.forgetting_text",
        "eval.judge=api:": "eval.judge",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            validate(compose_cfg(override))


# --------------------------------------------------------------------------- model fixtures


@pytest.fixture(scope="module")
def tiny():
    """(cfg, cache, path, tokenizer, model): the tiny GPT-2 with its weights spread out a little, so that
    greedy generations differ between prompts (the random init repeats one token)."""
    cfg = validate(
        compose_cfg(
            "logger=none",
            "eval.num_samples=3",
            "eval.generation.max_new_tokens=6",
            f"cache_dir={SESSION_CACHE}",
        )
    )
    cache = SESSION_CACHE
    path = models.model_path(cfg.model, cache)
    assert path == str(models.materialise_tiny(cfg.model, cache))
    tok = models.load_tokenizer(path)
    model = load_base(cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return cfg, cache, path, tok, model


PROMPTS = [
    "### Instruction:\nReverse the list.\n\n### Input:\n3 1 2\n\n### Response:\n",
    "Add the two numbers.",
    "### Instruction:\nConvert the text to upper case.\n\n### Input:\nriver stone cloud tiger\n\n### Response:\n",
]


def test_test_prompts_and_prompt_budget(tiny):
    cfg, cache, _, tok, _ = tiny
    max_new = int(cfg.eval.generation.max_new_tokens)
    test = data.build(cfg.data, tok, cache, num_prompts=4, reserve=max_new).test
    prompts, refs = test.prompts, test.references
    assert len(prompts) == 4 == len(set(prompts)) and all(p.endswith("### Response:\n") for p in prompts)
    again = data.build(cfg.data, tok, cache, num_prompts=4, reserve=max_new).test
    assert (again.prompts, again.references) == (prompts, refs)  # deterministic
    none = data.build(cfg.data, tok, cache, num_prompts=0, reserve=max_new).test
    assert (none.prompts, none.references) == ([], [])
    # A data set with `truncate`: the field is cut on its side so that the template (and the cue) survive.
    # max_seq_len 80 with 20 tokens reserved for the generation: a prompt budget of 60 tokens.
    data_cfg = OmegaConf.create(
        {
            "prompt": "Summarize.\n\n### Article:\n{article}\n\n### Summary:\n",
            "response": "{highlights}",
            "truncate": {"field": "article", "side": "right"},
            "max_seq_len": 80,
        }
    )
    rec = {"article": "the river runs under the stone bridge " * 40, "highlights": "a river"}
    prompt = shortened_prompt(data_cfg, rec, token_ids(tok, [data_cfg.prompt.format(**rec)])[0], 20, tok)
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) <= 62  # re-tokenising may merge at the cut
    assert prompt.startswith("Summarize.\n\n### Article:\nthe river") and prompt.endswith("### Summary:\n")


# --------------------------------------------------------------------------- generation


def _greedy_reference(model, tok, prompt: str, n: int) -> str:
    """Greedy decoding by full forward passes, one prompt, no padding, no cache: what generation must equal."""
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(n):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            if int(nxt) == tok.eos_token_id:
                break
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
    return tok.decode(ids[0, start:], skip_special_tokens=True).strip()


def test_generate_samples_batched_left_padded(tiny):
    cfg, _, _, tok, model = tiny
    model.train()
    rows = generation.generate_samples(model, tok, PROMPTS, ["a", ["b", "c"], "d"], cfg.eval.generation)
    assert [r["index"] for r in rows] == [0, 1, 2] and rows[1]["reference"] == ["b", "c"]
    assert all(set(r) == {"index", "prompt", "reference", "generation"} for r in rows)
    assert model.training and tok.padding_side == "right"  # state restored
    one = generation.generate(model, tok, PROMPTS, {"max_new_tokens": 6, "batch_size": 1})
    assert [r["generation"] for r in rows] == one
    assert one[0] == _greedy_reference(model, tok, PROMPTS[0], 6)
    assert len(set(one)) > 1  # the check is not vacuous


# Prompts from 3 to about 120 tokens, in an order that length-sorted batches reorder.
MANY = [PROMPTS[(i * 7) % 3] * (1 + (i * 5) % 4) if i % 2 else f"Say {i}." for i in range(11)]


def test_batched_greedy_equals_one_prompt_at_a_time(tiny, monkeypatch):
    """Batches of similar lengths, left-padded, with the KV cache: greedy output equals one prompt at a time
    (and full forward passes without a cache), in the prompts' order, whatever the batch size."""
    _, _, _, tok, model = tiny
    lengths = [len(tok(p, add_special_tokens=False).input_ids) for p in MANY]
    assert max(lengths) > 10 * min(lengths)  # padding matters in a mixed batch
    calls = []
    real = model.generate

    def spy(*args, **kwargs):
        calls.append((kwargs["input_ids"].shape, kwargs.get("use_cache")))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    one = generation.generate(model, tok, MANY, {"max_new_tokens": 8, "batch_size": 1})
    assert len(calls) == len(MANY)
    for size in (3, 8, 32):
        calls.clear()
        assert generation.generate(model, tok, MANY, {"max_new_tokens": 8, "batch_size": size}) == one
        assert len(calls) == -(-len(MANY) // size) and all(cache for _, cache in calls)
        widths = [shape[1] for shape, _ in calls]
        assert widths == sorted(widths, reverse=True)  # longest first: each batch pads to similar lengths
    assert one[:2] == [_greedy_reference(model, tok, p, 8) for p in MANY[:2]]
    assert len(set(one)) > 1


def test_cut_at_stop():
    assert (
        generation.cut_at_stop(" Sure, here it is.\n\nHuman: and more?", ["\n\nHuman:"])
        == "Sure, here it is."
    )
    assert (
        generation.cut_at_stop("a ### b\n\nHuman: c", ["\n\nHuman:", "###"]) == "a"
    )  # the first in the text
    assert generation.cut_at_stop("  nothing to cut ", ["\n\nHuman:"]) == "nothing to cut"
    assert generation.cut_at_stop("x", []) == "x"


def test_generation_stops_at_a_stop_string(tiny, monkeypatch):
    """eval.generation.stop_strings (the data set's `stop`): transformers stops the row at the string, and
    the text is cut before it."""
    _, _, _, tok, model = tiny
    free = generation.generate(model, tok, PROMPTS, {"max_new_tokens": 16, "batch_size": 3})
    text = max(free, key=len)
    k = next(
        (k for k in range(2, len(text) - 3) if text.find(text[k : k + 3]) == k and text[k].strip()), None
    )
    assert k is not None, text
    stop = text[k : k + 3]
    seen = {}
    real = model.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    got = generation.generate(
        model, tok, PROMPTS, {"max_new_tokens": 16, "batch_size": 3, "stop_strings": [stop]}
    )
    assert seen["stop_strings"] == [stop] and seen["tokenizer"] is tok
    assert got == [generation.cut_at_stop(t, [stop]) for t in free]
    assert got[free.index(text)] == text[:k].strip()


def test_generate_prompt_tuning(tiny):
    """Prompt tuning: the soft prompt is prepended; batched left-padded generation equals full forwards."""
    cfg, _, path, tok, model = tiny
    pt_cfg = validate(compose_cfg("logger=none", "method=prompt_tuning"))
    pm = apply_method(copy.deepcopy(model), pt_cfg, path)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    virtual = specs.of(pt_cfg).method.virtual_tokens  # the spec says it; the recipe passes it on
    assert virtual == 12
    batched = generation.generate(
        pm, tok, PROMPTS, {"max_new_tokens": 6, "batch_size": 3}, virtual_tokens=virtual
    )
    assert batched == [_greedy_reference(pm, tok, p, 6) for p in PROMPTS]
    with pm.disable_adapter():
        assert forgetting.generic_loss(pm, tok, virtual_tokens=virtual) == pytest.approx(
            forgetting.generic_loss(model, tok), rel=1e-6
        )
    assert forgetting.generic_loss(pm, tok, virtual_tokens=virtual) != pytest.approx(
        forgetting.generic_loss(model, tok), rel=1e-6
    )


def test_samples_writer_and_table(tmp_path):
    rows = [{"index": 0, "prompt": "p", "reference": ["a", "b"], "generation": "g", "reward": 0.5}]
    path = generation.write_samples(tmp_path / generation.SAMPLES, rows)
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows
    cols, cells = generation.samples_table(rows)
    assert cols == ["index", "prompt", "reference", "generation", "reward"] and cells == [
        [0, "p", "a\n---\nb", "g", 0.5]
    ]


# --------------------------------------------------------------------------- forgetting


def test_generic_loss_and_forgetting(tiny):
    _, _, _, tok, model = tiny
    text = forgetting.generic_text()
    assert len(text.split()) > 400 and forgetting.GENERIC_TEXT.is_file()
    short = "The river still runs under the stone bridge."
    ids = tok(short, return_tensors="pt").input_ids
    with torch.no_grad():
        want = model(input_ids=ids, labels=ids).loss.item()
    assert forgetting.generic_loss(model, tok, short) == pytest.approx(
        want, rel=1e-5
    )  # one window: the model's own loss
    before = forgetting.generic_loss(model, tok, block_size=64, batch_size=4)
    assert before == pytest.approx(
        forgetting.generic_loss(model, tok, block_size=64, batch_size=16), rel=1e-6
    )
    worse = copy.deepcopy(model)
    with torch.no_grad():
        for p in worse.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert forgetting.forgetting(before, forgetting.generic_loss(worse, tok, block_size=64)) > 0


# --------------------------------------------------------------------------- reward model


def test_reward_model_scores(tiny, tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    _, _, _, tok, _ = tiny
    for labels in (1, 2):
        torch.manual_seed(0)
        rm = GPT2ForSequenceClassification(
            GPT2Config(
                vocab_size=len(tok),
                n_layer=1,
                n_embd=32,
                n_head=2,
                n_positions=256,
                num_labels=labels,
                pad_token_id=0,
            )
        )
        folder = tmp_path / f"rm{labels}"
        rm.save_pretrained(folder)
        tok.save_pretrained(folder)
        prompts, responses = PROMPTS, ["1 2 3", "", "RIVER STONE CLOUD TIGER, and then a much longer reply"]
        scores = reward.reward_scores(prompts, responses, str(folder), batch_size=3)
        assert scores == pytest.approx(
            reward.reward_scores(prompts, responses, str(folder), batch_size=1), abs=1e-4
        )
        assert len(scores) == 3 and len(set(scores)) == 3
        if labels == 2:
            assert all(0.0 <= s <= 1.0 for s in scores)
    scoring.preflight(OmegaConf.create({"reward_model": str(tmp_path / "rm1"), "judge": None}))
    with pytest.raises(ConfigError, match="eval.reward_model=.*cannot be loaded"):
        scoring.preflight(OmegaConf.create({"reward_model": str(tmp_path / "missing"), "judge": None}))


# --------------------------------------------------------------------------- LLM judge


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint: /v1/models and /v1/chat/completions; scripted failures first."""

    state: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.state["auth"].append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != "Bearer sk-test-secret":
            return self._reply(401, {"error": "bad key"})
        self._reply(200, {"data": [{"id": "judge-1"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.state["auth"].append(self.headers.get("Authorization"))
        self.state["requests"].append(body)
        if self.state["fail"]:
            self.state["fail"] -= 1
            return self._reply(503, {"error": "busy"})
        reply = self.state["replies"][self.state["answered"] % len(self.state["replies"])]
        self.state["answered"] += 1
        self._reply(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})


@pytest.fixture
def judge_server(monkeypatch):
    """A local judge on 127.0.0.1 (an ephemeral port) that shuts itself down after 60 s at the latest."""
    state = {
        "auth": [],
        "requests": [],
        "fail": 0,
        "answered": 0,
        "replies": ["Score: 73", "100", "I cannot rate this."],
    }
    handler = type("Judge", (_Judge,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    monkeypatch.setenv("TG_TEST_JUDGE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("TG_TEST_JUDGE_KEY", "sk-test-secret")
    try:
        yield state
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(5)


JUDGE_SETTINGS = {
    "base_url_env": "TG_TEST_JUDGE_URL",
    "api_key_env": "TG_TEST_JUDGE_KEY",
    "timeout_s": 5,
    "retries": 1,
}


def test_parse_score():
    assert judge.parse_score("Score: 73/100") == 73
    assert judge.parse_score("100") == 100 and judge.parse_score("0") == 0 and judge.parse_score("85.5") == 85
    assert judge.parse_score("I'd say 250, no, 40") == 40
    assert judge.parse_score("no number") is None and judge.parse_score("") is None


def test_judge_endpoint(judge_server):
    rows = [
        {"prompt": f"p{i}", "reference": ["r", "s"] if i else "r", "generation": f"g{i}"} for i in range(3)
    ]
    judge_server["fail"] = 1  # one 503 first: retried
    scores, replies = judge.judge_scores(rows, "api:judge-1", JUDGE_SETTINGS)
    assert scores == [73, 100, None] and replies[2] == "I cannot rate this."
    assert len(judge_server["requests"]) == 4 and set(judge_server["auth"]) == {"Bearer sk-test-secret"}
    first = judge_server["requests"][-3]
    assert first["model"] == "judge-1" and first["temperature"] == 0
    assert "p0" in first["messages"][0]["content"] and "g0" in first["messages"][0]["content"]
    scoring.preflight(
        OmegaConf.create({"reward_model": None, "judge": "api:judge-1", "judge_settings": JUDGE_SETTINGS})
    )


def test_judge_errors_are_clear_and_keyless(judge_server, monkeypatch):
    cfg = OmegaConf.create({"reward_model": None, "judge": "api:judge-1", "judge_settings": JUDGE_SETTINGS})
    monkeypatch.setenv("TG_TEST_JUDGE_KEY", "sk-wrong-secret")
    with pytest.raises(ConfigError, match="rejected the key.*TG_TEST_JUDGE_KEY") as e:
        scoring.preflight(cfg)
    assert "sk-wrong" not in str(e.value)
    judge_server["fail"] = 5
    with pytest.raises(judge.JudgeError, match="HTTP 503") as e:
        judge.chat("hi", "judge-1", {**JUDGE_SETTINGS, "retries": 0})
    assert "sk-" not in str(e.value)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TG_TEST_JUDGE_URL", f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ConfigError, match="unreachable.*TG_TEST_JUDGE_URL"):
        scoring.preflight(cfg)


def test_local_judge(tiny):
    """A local causal LM as judge (here the tiny model's folder): prompts built, replies parsed or None."""
    from transformers import AutoModelForCausalLM

    _, _, path, tok, _ = tiny
    rows = [
        {"prompt": "p", "reference": "r", "generation": "g"},
        {"prompt": "Add the two numbers.", "reference": ["7", "seven"], "generation": "8"},
    ]
    scores, replies = judge.judge_scores(rows, path, {"max_tokens": 4})
    assert len(scores) == len(replies) == 2
    # The replies are the folder's model (not the fixture's perturbed copy) continuing the default judge
    # template greedily for max_tokens tokens (no chat template on this tokenizer); the scores parse them.
    assert not getattr(tok, "chat_template", None)
    folder_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    texts = [
        JUDGE_TEMPLATE.format(prompt="p", reference="r", generation="g"),
        JUDGE_TEMPLATE.format(prompt="Add the two numbers.", reference="7\nseven", generation="8"),
    ]
    assert replies == [_greedy_reference(folder_model, tok, t, 4) for t in texts]
    assert scores == [judge.parse_score(r) for r in replies]
    scoring.preflight(OmegaConf.create({"reward_model": None, "judge": path}))
    with pytest.raises(ConfigError, match="eval.judge=.*cannot be loaded"):
        scoring.preflight(OmegaConf.create({"reward_model": None, "judge": path + "-missing"}))


# --------------------------------------------------------------------------- the whole generation eval


def test_evaluate_generations_end_to_end(tiny, tmp_path, judge_server, monkeypatch):
    cfg, cache, _, tok, model = tiny
    cfg = validate(
        OmegaConf.merge(
            cfg,
            {
                "data": {"metrics": ["rouge", "bleu"]},
                "eval": {"judge": "api:judge-1", "judge_settings": JUDGE_SETTINGS},
            },
        )
    )
    names = specs.of(cfg).text_metrics
    assert names == ("rouge", "bleu")
    n, max_new = int(cfg.eval.num_samples), int(cfg.eval.generation.max_new_tokens)
    test = data.build(cfg.data, tok, cache, num_prompts=n, reserve=max_new).test  # as the recipe does
    recorder = TableRecorder()
    out = scoring.evaluate_generations(
        model, tok, test.prompts, test.references, cfg.eval, names, tmp_path, loggers=[recorder, object()]
    )
    assert {
        "test/rouge1",
        "test/rouge2",
        "test/rougeL",
        "test/bleu",
        "test/judge",
        "test/judge_parsed",
    } <= set(out)
    assert out["test/judge"] == pytest.approx((73 + 100) / 2) and out["test/judge_parsed"] == pytest.approx(
        2 / 3
    )
    rows = [json.loads(x) for x in (tmp_path / generation.SAMPLES).read_text().splitlines()]
    assert len(rows) == 3 and {"prompt", "reference", "generation", "judge", "judge_reply"} <= set(rows[0])
    # The samples are the first 3 distinct prompts of the test split with their references, rendered here
    # from the split's records (the synthetic data has no `truncate`: nothing is cut).
    groups: dict[str, list[str]] = {}
    for rec in load_splits(cfg.data, cache)["test"]:
        groups.setdefault(render_prompt(cfg.data, rec), []).append(render_response(cfg.data, rec))
    prompts = list(groups)[:3]
    refs = [groups[p][0] if len(groups[p]) == 1 else groups[p] for p in prompts]
    assert [r["prompt"] for r in rows] == prompts and [r["reference"] for r in rows] == refs
    want = task_metrics.compute_metrics(
        ["rouge", "bleu"], [r["generation"] for r in rows], refs, metric_args=cfg.eval.metric_args
    )
    assert {k: out[k] for k in want} == pytest.approx(want)
    ((key, cols, cells),) = recorder.tables
    assert key == "test/samples" and cols[-1] == "judge" and len(cells) == 3
    assert "sk-test-secret" not in (tmp_path / generation.SAMPLES).read_text() + json.dumps(
        OmegaConf.to_container(cfg)
    )
    # eval.num_samples=0: the recipe asks for no test prompts, and nothing is generated or written.
    nothing = data.build(cfg.data, tok, cache, num_prompts=0, reserve=max_new).test
    assert (
        scoring.evaluate_generations(
            model, tok, nothing.prompts, nothing.references, cfg.eval, names, Path(tmp_path / "none")
        )
        == {}
    )
    assert not (tmp_path / "none").exists()
