"""What each streamed token should have been: the same weights in float32, one sequence per forward.

Two comparisons, both tolerant of bf16 rounding and of nothing else:

- `logprob_error`: a reply sampled at temperature 1 (top_p 1) logs log_softmax(logits)[token] per
  token. Teacher-forcing the stream's own tokens through the float32 reference gives what that
  log-prob should be; the gap, in units of the reference logits' spread at that position, is
  bf16 noise (a few hundredths) when the row was computed from the right context, KV rows and
  adapter, and of order one when anything was wrong (another row's KV, a stale prefix, another
  version's or a half-loaded adapter's weights). It needs no second run, so it checks batched,
  prefix-cached and mid-swap streams alike.
- `greedy_agree`: two greedy runs must give the same tokens, except that after a near-tie (the
  two tokens' reference logits within `tol` spreads of the top) bf16 may pick either; the rest
  of that pair is then not comparable. This is how vLLM compares bf16 outputs (a divergence must
  be between tokens the reference ranks alike).
"""
from __future__ import annotations

import copy

import torch


class Reference:
    """A float32 copy of a model (taken before any adapter is loaded into the served one), with
    the served adapter versions loaded into it by name."""

    def __init__(self, model, device):
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).float().eval()
        self.peft = None
        self.versions: set[str] = set()

    def add_adapter(self, version: str, folder) -> None:
        from peft import PeftModel
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, str(folder), adapter_name=version)
        else:
            self.peft.load_adapter(str(folder), adapter_name=version)
        self.peft.eval()
        self.versions.add(version)

    @torch.no_grad()
    def logits(self, version: str | None, ids: list[int]) -> torch.Tensor:
        """[L, V] float32 logits of `ids` under `version` (None = the base model)."""
        inp = torch.tensor([ids], device=self.device)                 # [1, L]
        if version is None or version == "base":
            if self.peft is None:
                return self.model(input_ids=inp).logits[0].float()
            with self.peft.disable_adapter():
                return self.peft(input_ids=inp).logits[0].float()
        if version not in self.versions:
            raise KeyError(f"the reference has no adapter {version!r}")
        self.peft.set_adapter(version)
        return self.peft(input_ids=inp).logits[0].float()

    def close(self) -> None:
        self.model = self.peft = None


def logprob_error(ref: Reference, prompt: list[int], tokens: list[int], logprobs: list[float],
                  version: str | None) -> list[float]:
    """Per token: |logged log-prob - reference log-prob| / std of the reference logits there."""
    if not tokens:
        return []
    logits = ref.logits(version, prompt + tokens[:-1])                     # [P+T-1, V]
    pos = logits[len(prompt) - 1:]                                          # [T, V]: position t predicts token t
    tok = torch.tensor(tokens, device=pos.device)[:, None]                 # [T, 1]
    want = torch.log_softmax(pos, -1).gather(-1, tok)[:, 0]                # [T]
    got = torch.tensor(logprobs, device=pos.device, dtype=torch.float32)    # [T]
    return ((got - want).abs() / pos.std(-1)).tolist()


def greedy_agree(ref: Reference, version: str | None, prompt: list[int], a: list[int], b: list[int],
                 tol: float) -> dict:
    """Do two greedy replies to `prompt` agree, up to a near-tie? -> {ok, exact, at, gap}."""
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if k is None:
        return {"ok": len(a) == len(b), "exact": len(a) == len(b), "at": None, "gap": None}
    row = ref.logits(version, prompt + a[:k])[-1]                           # [V]
    gap = float((row.max() - torch.minimum(row[a[k]], row[b[k]])) / row.std())
    return {"ok": gap <= tol, "exact": False, "at": k, "gap": round(gap, 5)}


def summarize_errors(errors: list[list[float]]) -> dict:
    flat = [e for row in errors for e in row]
    if not flat:
        return {"tokens": 0, "max": None, "p99": None}
    ordered = sorted(flat)
    return {"tokens": len(flat), "max": round(ordered[-1], 5), "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 5)}
