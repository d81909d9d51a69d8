"""Pseudo-log-likelihood of texts under a masked language model (SSD's log p_LM).

PLL(text) = sum over the text's tokens w_i of log P_MLM(w_i | text with w_i replaced by [MASK])
(Salazar et al., ACL 2020, "Masked Language Model Scoring"; used by Wang et al., MLHC 2023, SSD,
with CXR-BERT). Special tokens ([CLS], [SEP]) are never masked or scored.

Every masked copy of every distinct text is one row; rows are sorted by length and run in batches
of ``batch_size`` rows, so padding is small and repeated texts cost nothing extra. Memory per batch
is about ``batch_size * seq_len * vocab`` floats of logits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from debiascl.errors import ConfigError


def load_masked_lm(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """Load a Hugging Face masked LM and its tokenizer from a local directory (no download).

    Args:
        path: folder with ``config.json``, the weights and the tokenizer files (e.g. a saved
            CXR-BERT or BERT checkpoint).
        device: where to put the model.

    Returns:
        ``(model, tokenizer)`` with the model in eval mode.
    """
    try:
        from transformers import AutoModelForMaskedLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is in the text extra
        raise ConfigError(
            "the ssd_mlm eta source needs transformers; install debiascl[text]"
        ) from exc
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"no masked language model at {folder} (config.json missing); set "
            "loss.<name>.mlm_path to a local folder saved with save_pretrained (model, tokenizer)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForMaskedLM.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load a masked language model and tokenizer from {folder}: {exc}"
        ) from exc
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"the tokenizer in {folder} has no [MASK] token; use a masked LM")
    return model.to(device).eval(), tokenizer


def model_fingerprint(path: str | Path) -> dict[str, object]:
    """What identifies a saved model for the cache: its path, config and weight file sizes."""
    folder = Path(path).expanduser().resolve()
    config = (folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b""
    weights = sorted(
        (p.name, p.stat().st_size)
        for p in folder.iterdir()
        if p.suffix in {".bin", ".safetensors", ".pt", ".h5", ".msgpack"}
    )
    return {
        "path": str(folder),
        "config_sha256": hashlib.sha256(config).hexdigest()[:16],
        "weights": weights,
    }


@torch.no_grad()
def pseudo_log_likelihood(
    texts: Sequence[str],
    model: Any,
    tokenizer: Any,
    batch_size: int = 32,
    max_length: int = 128,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """(n,) float64 pseudo-log-likelihood (natural log) of each text.

    Args:
        texts: the texts (duplicates are scored once).
        model: a masked LM returning ``.logits`` of shape (rows, seq, vocab).
        tokenizer: its tokenizer (needs a mask token; special tokens are added and not scored).
        batch_size: masked copies per forward pass.
        max_length: texts are truncated to this many tokens (special tokens included); tokens
            cut off do not count.
        device: where to run (default: the model's device).
        progress: show a tqdm progress bar.

    Returns:
        (n,) tensor; a text with no scorable token gets 0 (log of probability 1).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if len(texts) == 0:
        return torch.zeros(0, dtype=torch.float64)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    distinct = list(dict.fromkeys(texts))
    enc = tokenizer(
        distinct,
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
    )
    # One job per (text, scored position); sort by length to keep padding small.
    jobs = [
        (u, pos)
        for u, special in enumerate(enc["special_tokens_mask"])
        for pos, is_special in enumerate(special)
        if not is_special
    ]
    jobs.sort(key=lambda job: len(enc["input_ids"][job[0]]))
    totals = torch.zeros(len(distinct), dtype=torch.float64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    mask_id = tokenizer.mask_token_id
    bar = tqdm(total=len(jobs), desc="pseudo-log-likelihood", unit="tok", disable=not progress)
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            width = max(len(enc["input_ids"][u]) for u, _ in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            targets = torch.empty(len(chunk), dtype=torch.long)
            positions = torch.empty(len(chunk), dtype=torch.long)
            for row, (u, pos) in enumerate(chunk):
                seq = enc["input_ids"][u]
                ids[row, : len(seq)] = torch.tensor(seq)
                attention[row, : len(seq)] = 1
                targets[row] = seq[pos]
                positions[row] = pos
                ids[row, pos] = mask_id
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            rows = torch.arange(len(chunk), device=logits.device)
            scored = torch.log_softmax(logits[rows, positions.to(logits.device)].double(), dim=-1)
            picked = scored[rows, targets.to(logits.device)].cpu()
            owners = torch.tensor([u for u, _ in chunk], dtype=torch.long)
            totals.index_add_(0, owners, picked)
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    index = {text: u for u, text in enumerate(distinct)}
    return totals[torch.tensor([index[t] for t in texts], dtype=torch.long)]
