"""LLM-as-judge scores 0-100 of generations: a local causal LM run greedily here, or an OpenAI-compatible
chat endpoint whose URL and key come from environment variables (the key is read at call time and never
stored or printed)."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from src.config.evaluation import JUDGE_TEMPLATE, JudgeSettings
from src.errors import ConfigError
from src.evaluation.generation import generate
from src.evaluation.reward import load_dtype, load_error
from src.evaluation.task_metrics import plain


class JudgeError(RuntimeError):
    """The judge endpoint failed (after retries); the message never contains the API key."""


def judge_settings(given: Any = None) -> dict[str, Any]:
    """eval.judge_settings with the schema's defaults for keys left out or null (template: JUDGE_TEMPLATE)."""
    s = JudgeSettings.model_validate({k: v for k, v in (plain(given) or {}).items() if v is not None})
    return {**s.model_dump(), "template": s.template or JUDGE_TEMPLATE}


_SCORE = re.compile(r"(?<![\d.])(\d{1,3})(?:\.\d+)?(?![\d])")


def parse_score(text: str) -> int | None:
    """The first number 0-100 in a judge's reply, or None."""
    for m in _SCORE.finditer(text or ""):
        v = int(m.group(1))
        if 0 <= v <= 100:
            return v
    return None


def _endpoint(settings: dict[str, Any]) -> tuple[str, str | None]:
    """(base URL, API key or None), both read from the environment now; neither is stored."""
    base = os.environ.get(str(settings["base_url_env"])) or str(settings["default_base_url"])
    key = os.environ.get(str(settings["api_key_env"])) or None
    return base.rstrip("/"), key


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))  # no user:password, no query


def _open(req: urllib.request.Request, timeout: float):
    host = urllib.parse.urlsplit(req.full_url).hostname or ""
    handlers = [urllib.request.ProxyHandler({})] if host in ("localhost", "127.0.0.1", "::1") else []
    return urllib.request.build_opener(*handlers).open(req, timeout=timeout)


def _request(url: str, key: str | None, payload: dict | None, timeout: float) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with _open(req, timeout) as resp:
        return json.loads(resp.read().decode("utf-8") or "{}")


def chat(content: str, model: str, settings: Any = None) -> str:
    """One user message to an OpenAI-compatible /chat/completions endpoint; the reply's text.

    Retries HTTP 429/5xx and connection errors `retries` times; then raises JudgeError (without the key).
    """
    s = judge_settings(settings)
    base, key = _endpoint(s)
    url = base + "/chat/completions"
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": int(s["max_tokens"]),
        "temperature": 0,
    }
    attempts = int(s["retries"]) + 1
    for attempt in range(attempts):
        try:
            data = _request(url, key, payload, float(s["timeout_s"]))
            return str(data["choices"][0]["message"]["content"] or "")
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code} {e.reason}"
            retry = e.code == 429 or e.code >= 500
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            retry = True
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise JudgeError(
                f"eval.judge: {_redact(url)} answered without choices[0].message.content ({type(e).__name__})"
            ) from None
        if not retry or attempt == attempts - 1:
            raise JudgeError(
                f"eval.judge: {_redact(url)} failed after {attempt + 1} attempt(s): {reason}; "
                f"URL from ${s['base_url_env']}, key from ${s['api_key_env']}"
            )
        time.sleep(min(0.5 * 2**attempt, 8.0))
    raise AssertionError("unreachable")


def judge_prompts(rows: Sequence[dict], template: str) -> list[str]:
    def ref(r: Any) -> str:
        return "\n".join(r) if isinstance(r, list) else str(r)

    return [
        template.format(prompt=r["prompt"], reference=ref(r["reference"]), generation=r["generation"])
        for r in rows
    ]


def judge_scores(
    rows: Sequence[dict], judge: str, settings: Any = None
) -> tuple[list[int | None], list[str]]:
    """(scores 0-100 or None where the reply had no number, raw replies) for generated rows.

    `judge` is "api:<model name>" for an OpenAI-compatible endpoint (URL from $<base_url_env>, key from
    $<api_key_env>), otherwise a local causal-LM folder or model id run greedily here.
    """
    s = judge_settings(settings)
    texts = judge_prompts(rows, str(s["template"]))
    if judge.startswith("api:"):
        replies = [chat(t, judge[4:], s) for t in texts]
    else:
        replies = _local_judge(judge, texts, int(s["max_tokens"]))
    return [parse_score(r) for r in replies], replies


def _local_judge(path: str, texts: list[str], max_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype())
    except Exception as e:
        raise load_error("eval.judge", path, e) from None
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(tok, "chat_template", None):
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in texts
        ]
    try:
        return generate(model, tok, texts, {"max_new_tokens": max_tokens, "batch_size": 4})
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def check_reachable(judge: str, settings: Any = None) -> None:
    """Before training: a local judge's config loads, or an api: endpoint answers (ConfigError if not)."""
    if not judge.startswith("api:"):
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(judge)
        except Exception as e:
            raise load_error("eval.judge", judge, e) from None
        return
    s = judge_settings(settings)
    base, key = _endpoint(s)
    try:
        _request(base + "/models", key, None, min(float(s["timeout_s"]), 15.0))
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ConfigError(
                f"eval.judge={judge!r}: {_redact(base)} rejected the key (HTTP {e.code}); "
                f"set ${s['api_key_env']}"
            ) from None
        # Any other HTTP answer (404: no /models route) means the server is there.
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as e:
        raise ConfigError(
            f"eval.judge={judge!r}: endpoint {_redact(base)} unreachable ({type(e).__name__}: "
            f"{getattr(e, 'reason', e)}); set ${s['base_url_env']} to an OpenAI-compatible base URL (…/v1)"
        ) from None
