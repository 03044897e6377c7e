"""Evaluation on held-out batches: loss and perplexity for causal tasks, accuracy and F1 for
classification; and a few generated samples, since the seed studies judged outputs by reading them."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from lorascope.train.amp import Precision

__all__ = ["evaluate", "classification_metrics", "generate_samples"]


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy; F1, of the positive class for two labels, macro-averaged otherwise; and
    ``majority``, the share of the most common label among these examples: the accuracy of a
    model that learned nothing but to answer that label, against which accuracy is read."""
    accuracy = float((predictions == labels).float().mean()) if labels.numel() else math.nan
    counts = torch.bincount(labels.long(), minlength=num_labels)
    majority = float(counts.max()) / labels.numel() if labels.numel() else math.nan
    f1s = []
    for cls in range(num_labels):
        tp = int(((predictions == cls) & (labels == cls)).sum())
        fp = int(((predictions == cls) & (labels != cls)).sum())
        fn = int(((predictions != cls) & (labels == cls)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    f1 = f1s[1] if num_labels == 2 else sum(f1s) / len(f1s)
    return {"accuracy": accuracy, "f1": f1, "majority": majority}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: Iterable[dict[str, torch.Tensor]] | None,
    device: torch.device,
    precision: Precision,
    task: str,
    max_batches: int = 0,
    stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Metrics over up to ``max_batches`` held-out batches (all when 0), with ``examples``, how
    many held-out examples they cover (a metric means little without it). ``stop`` is asked before
    each batch: when it says so (a signal) the evaluation ends at once with no metrics, since a
    part of the held-out set measures something else."""
    if data is None:  # no held-out data (data.val_fraction = 0): nothing to evaluate
        return {}
    was_training = model.training
    model.eval()
    total_loss, batches, examples = 0.0, 0, 0
    predictions, labels = [], []
    for i, batch in enumerate(data):
        if max_batches and i >= max_batches:
            break
        if stop is not None and stop():
            model.train(was_training)
            return {}
        batch = {k: v.to(device) for k, v in batch.items()}
        with precision.autocast(device):
            out = model(**batch)
        total_loss += float(out.loss)
        batches += 1
        examples += int(batch["input_ids"].shape[0])
        if task == "classification":
            predictions.append(out.logits.argmax(-1).cpu())
            labels.append(batch["labels"].cpu())
    model.train(was_training)
    if batches == 0:
        return {}
    loss = total_loss / batches
    metrics = {"loss": loss, "examples": float(examples)}
    if task == "classification":
        num_labels = int(getattr(model.config, "num_labels", 2))
        metrics.update(classification_metrics(torch.cat(predictions), torch.cat(labels), num_labels))
    else:
        metrics["perplexity"] = math.exp(min(loss, 50.0))  # capped: exp overflows on a diverged run
    return metrics


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], device: torch.device, max_new_tokens: int = 32) -> list[str]:
    """Greedy continuations of each prompt (greedy, so the same run gives the same text)."""
    was_training = model.training
    model.eval()
    outputs = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt").to(device)
        generated = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        outputs.append(tokenizer.decode(generated[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True))
    model.train(was_training)
    return outputs
