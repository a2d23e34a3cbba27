"""Backends plug per-step ops into the one ARGS decoding loop in ``args_fast.decoding.decoder``.

Each backend provides a policy runner and a reward runner with this contract:

* ``policy.prefill(input_ids, attention_mask) -> logits (B, V)`` for the next token of each row;
  ``policy.step(tokens (B,)) -> logits (B, V)`` after appending one token per row.
* ``reward.prefill(input_ids, attention_mask)``;
  ``reward.score(candidate_ids (B, k)) -> rewards (B, k) float32``: reward of context + candidate;
  ``reward.commit(choice (B,), tokens (B,))``: the chosen candidate joins each row's context.
"""
