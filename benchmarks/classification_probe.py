"""How much of the embedded classification task (rotten-tomatoes reviews) a frozen encoder's
features hold: a logistic-regression probe, fitted by L-BFGS on standardised features of the first
`--train` training reviews and scored on the first `--eval` held-out ones (the split and the
tokenisation are the ones `lorascope record` uses), for the classifier's own input (the pooler
over [CLS]) and for the mean over tokens (how all-MiniLM-L6 was trained to embed), at several
L2 strengths. Beside it, the majority rate of the same held-out reviews: the accuracy of answering
the commoner label to everything. Studies 003 and 004 (docs/studies.md) read it as the ceiling of
what a short LoRA run can be expected to reach.

    OMP_NUM_THREADS=1 python -m benchmarks.classification_probe --train 512 --eval 256
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from lorascope.config import RunConfig, build_config
from lorascope.data import build_data
from lorascope.models import load_model

L2 = (1e-3, 1e-2, 1e-1, 1.0)


def features(model, batches, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pooler, mean over tokens, labels) of the first `count` examples of `batches`."""
    pooled, mean, labels = [], [], []
    with torch.no_grad():
        for batch in batches:
            out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   token_type_ids=batch.get("token_type_ids"))
            mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled.append(out.pooler_output.numpy())
            mean.append(((out.last_hidden_state * mask).sum(1) / mask.sum(1)).numpy())
            labels.append(batch["labels"].numpy())
            if sum(len(y) for y in labels) >= count:
                break
    return tuple(np.concatenate(parts)[:count] for parts in (pooled, mean, labels))


def probe_accuracy(X: np.ndarray, y: np.ndarray, X_eval: np.ndarray, y_eval: np.ndarray, l2: float) -> float:
    mu, sd = X.mean(0), X.std(0) + 1e-6
    X_t = torch.tensor((X - mu) / sd, dtype=torch.float64)
    X_e = torch.tensor((X_eval - mu) / sd, dtype=torch.float64)
    target = torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(X_t @ w + b, target) + l2 * (w ** 2).sum()
        value.backward()
        return value

    opt.step(loss)
    with torch.no_grad():
        return float(((X_e @ w + b > 0).numpy() == (y_eval == 1)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = build_config(RunConfig(), [], {"model.name": args.model, "data.source": "rotten_tomatoes",
                                         "data.task": "classification", "data.max_length": args.max_length,
                                         "data.batch_size": 8, "seed": args.seed})
    model, tokenizer = load_model(cfg.model, task="classification", num_labels=2)
    model.eval()
    data = build_data(cfg.data, tokenizer, seed=args.seed, task="classification")
    train, held_out = features(model, data.train, args.train), features(model, data.val, args.eval)
    majority = max(held_out[2].mean(), 1 - held_out[2].mean())
    print(f"{args.model}, seed {args.seed}: {len(train[2])} training and {len(held_out[2])} held-out reviews, "
          f"max length {args.max_length}; majority rate of the held-out reviews {majority:.3f}")
    print("| features | " + " | ".join(f"L2 {l2:g}" for l2 in L2) + " |")
    print("| --- |" + " --- |" * len(L2))
    for i, name in enumerate(("pooler over [CLS]", "mean over tokens")):
        accuracies = [probe_accuracy(train[i], train[2], held_out[i], held_out[2], l2) for l2 in L2]
        print(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accuracies) + " |")


if __name__ == "__main__":
    main()
