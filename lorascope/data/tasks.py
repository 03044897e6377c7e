"""Tasks turn records (dicts) into tokenised examples: the implementations of
``lorascope.data.TASKS``. Each task knows its columns, how to encode a batch of records, and, for
causal tasks, how to make a generation prompt from a held-out record.

An example is a dict of token lists (``input_ids``, ``attention_mask``, maybe ``token_type_ids``)
plus ``labels``: a token list with -100 where no loss is taken, or an int for classification.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lorascope.config import DataConfig
from lorascope.data import TASKS
from lorascope.errors import UsageError
from lorascope.models import quiet_transformers

__all__ = [
    "TASKS",
    "IGNORE_INDEX",
    "Task",
    "Encoded",
    "alpaca_prompt",
    "encode_instruction",
    "resolve_columns",
]

IGNORE_INDEX = -100  # the label torch's cross-entropy skips

Record = dict[str, Any]
Example = dict[str, Any]


@dataclass
class Encoded:
    examples: list[Example]
    origins: list[int]  # the record each example came from, so a split never divides a record
    truncated: int = 0  # records cut to fit max_length
    label_names: list[str] | None = None


class Task(Protocol):
    name: str
    causal: bool  # generates text, so a held-out record can become a sample prompt

    def encode(self, records: list[Record], tokenizer: Any, cfg: DataConfig) -> Encoded: ...

    def sample(self, record: Record, tokenizer: Any, cfg: DataConfig) -> tuple[str, str] | None: ...


def quiet_length_warning():
    """Whole texts are tokenised first and cut to max_length afterwards, which makes transformers
    warn that a sequence is 'longer than the specified maximum'; here that is intended."""
    return quiet_transformers()


def _missing_columns(needed: list[str], available: list[str], what: str) -> UsageError:
    return UsageError(
        f"the data has no column {' or '.join(repr(c) for c in needed)} for {what}; its columns "
        f"are: {', '.join(available) or '(none)'}. Name the right one with the data.*_column settings"
    )


def resolve_columns(chosen: str, candidates: tuple[str, ...], available: list[str], what: str) -> str:
    """The configured column if set, else the first usual name present; an error names what exists."""
    if chosen:
        if chosen not in available:
            raise _missing_columns([chosen], available, what)
        return chosen
    for name in candidates:
        if name in available:
            return name
    raise _missing_columns(list(candidates), available, what)


def _text(record: Record, column: str, index: int) -> str:
    value = record.get(column)
    if value is None:
        raise UsageError(f"record {index} has no value in column {column!r}; remove or fill it")
    return str(value)


# --- instruction tuning (Alpaca) -----------------------------------------------------------------

# The Stanford Alpaca prompt, as 002 used it. The header that precedes the response is kept apart so
# that truncation can shorten the instruction's input without ever cutting the response marker.
_ALPACA_INTRO = {
    True: ("Below is an instruction that describes a task, paired with an input that provides "
           "further context. Write a response that appropriately completes the request.\n\n"),
    False: ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"),
}
_RESPONSE_HEADER = "\n\n### Response:\n"


def _alpaca_head(instruction: str, context: str) -> str:
    head = _ALPACA_INTRO[bool(context)] + f"### Instruction:\n{instruction}"
    return head + f"\n\n### Input:\n{context}" if context else head


def alpaca_prompt(instruction: str, context: str = "") -> str:
    """The full prompt a model sees before its response."""
    return _alpaca_head(instruction, context) + _RESPONSE_HEADER


def encode_instruction(
    prompt_head: list[int], header: list[int], response: list[int], max_length: int
) -> tuple[list[int], list[int], bool]:
    """Joins prompt and response token ids and masks the prompt out of the loss.

    When too long, the response keeps at least a quarter of max_length (or all of it if shorter) and
    the prompt is cut at the end of its head, so the response header always stays. Returns
    (input_ids, labels, truncated)."""
    total = len(prompt_head) + len(header) + len(response)
    truncated = total > max_length
    if truncated:
        floor = min(len(response), max(1, max_length // 4))
        keep_response = min(len(response), max(floor, max_length - len(prompt_head) - len(header)))
        prompt_budget = max_length - keep_response
        if prompt_budget >= len(header):
            prompt = prompt_head[: prompt_budget - len(header)] + header
        else:
            prompt = header[len(header) - prompt_budget:] if prompt_budget > 0 else []
        response = response[:keep_response]
    else:
        prompt = prompt_head + header
    return prompt + response, [IGNORE_INDEX] * len(prompt) + list(response), truncated


class InstructionTask:
    """Alpaca records (instruction, optional input, output); the loss covers the response only."""

    name = "instruction"
    causal = True

    def _columns(self, records: list[Record]) -> tuple[str, str | None, str]:
        available = list(records[0])
        instruction = resolve_columns("", ("instruction",), available, "the instruction")
        output = resolve_columns("", ("output", "response"), available, "the response")
        context = "input" if "input" in available else None
        return instruction, context, output

    def _parts(self, record: Record, columns: tuple[str, str | None, str], index: int) -> tuple[str, str]:
        instruction, context, output = columns
        ctx = str(record.get(context) or "") if context else ""
        return _alpaca_head(_text(record, instruction, index), ctx), _text(record, output, index)

    def encode(self, records: list[Record], tokenizer: Any, cfg: DataConfig) -> Encoded:
        columns = self._columns(records)
        heads, responses = zip(*(self._parts(r, columns, i) for i, r in enumerate(records)))
        # No token is longer than ~8 characters in practice, so a head beyond 8 * max_length
        # characters is cut anyway; trimming first keeps tokenising long articles cheap.
        heads = [h[: 8 * cfg.max_length] for h in heads]
        with quiet_length_warning():
            head_ids = tokenizer(list(heads), add_special_tokens=True)["input_ids"]
            response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
            header_ids = tokenizer(_RESPONSE_HEADER, add_special_tokens=False)["input_ids"]
        # The end-of-sequence token is part of the target: the model learns where to stop.
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        examples, truncated = [], 0
        for head, response in zip(head_ids, response_ids):
            ids, labels, cut = encode_instruction(head, header_ids, response + eos, cfg.max_length)
            truncated += cut
            examples.append({"input_ids": ids, "labels": labels})
        return Encoded(examples, list(range(len(records))), truncated)

    def sample(self, record: Record, tokenizer: Any, cfg: DataConfig) -> tuple[str, str]:
        # The prompt exactly as training saw it (truncated the same way), so a generated sample
        # answers the question the model was trained on; the reference is the whole response.
        example = self.encode([record], tokenizer, cfg).examples[0]
        prompt_ids = [t for t, label in zip(example["input_ids"], example["labels"]) if label == IGNORE_INDEX]
        _, _, output = self._columns([record])
        return tokenizer.decode(prompt_ids, skip_special_tokens=True), _text(record, output, 0)


# --- plain causal language modelling -------------------------------------------------------------

class CausalLMTask:
    """Plain text, each document cut into max_length chunks (no packing across documents, so a
    chunk never mixes two texts); the loss covers every real token."""

    name = "causal_lm"
    causal = True
    candidates = ("text", "content", "document", "sentence")

    def encode(self, records: list[Record], tokenizer: Any, cfg: DataConfig) -> Encoded:
        column = resolve_columns(cfg.text_column, self.candidates, list(records[0]), "the text")
        texts = [_text(r, column, i) for i, r in enumerate(records)]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        examples, origins = [], []
        with quiet_length_warning():
            encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
        for index, ids in enumerate(encoded):
            ids = list(ids) + eos
            for start in range(0, len(ids), cfg.max_length):
                chunk = ids[start:start + cfg.max_length]
                if len(chunk) < 2:  # one token predicts nothing
                    continue
                # labels share the list: nothing mutates examples, and a corpus of chunks is large
                examples.append({"input_ids": chunk, "labels": chunk})
                origins.append(index)
        return Encoded(examples, origins)

    def sample(self, record: Record, tokenizer: Any, cfg: DataConfig) -> tuple[str, str]:
        """The first half of the record's first chunk as the prompt, the next half as reference."""
        column = resolve_columns(cfg.text_column, self.candidates, list(record), "the text")
        with quiet_length_warning():
            ids = tokenizer(_text(record, column, 0), add_special_tokens=True)["input_ids"]
        half = max(1, cfg.max_length // 2)
        return (tokenizer.decode(ids[:half], skip_special_tokens=True),
                tokenizer.decode(ids[half:2 * half], skip_special_tokens=True))


# --- sequence classification ---------------------------------------------------------------------

_PAIR_PARTNERS = {"sentence1": "sentence2", "premise": "hypothesis", "question1": "question2",
                  "question": "sentence", "text1": "text2"}


class ClassificationTask:
    """Single sentences or pairs (GLUE/IMDB style) with a label; string labels map to ids in
    sorted order, so the mapping does not depend on which records come first."""

    name = "classification"
    causal = False
    candidates = ("text", "sentence", "sentence1", "premise", "question1", "question", "text1")

    def _columns(self, records: list[Record], cfg: DataConfig) -> tuple[str, str | None, str]:
        available = list(records[0])
        text = resolve_columns(cfg.text_column, self.candidates, available, "the text")
        if cfg.text_pair_column:
            pair = resolve_columns(cfg.text_pair_column, (), available, "the second text")
        else:
            partner = _PAIR_PARTNERS.get(text)
            pair = partner if partner in available else None
        label = resolve_columns(cfg.label_column, ("label", "labels"), available, "the label")
        return text, pair, label

    def _labels(self, records: list[Record], column: str, num_labels: int) -> tuple[list[int], list[str]]:
        raw = []
        for i, r in enumerate(records):
            value = r.get(column)
            if value is None:
                raise UsageError(f"record {i} has no label in column {column!r}; remove or fill it")
            raw.append(int(value) if isinstance(value, bool) else value)
        if all(isinstance(v, int) for v in raw):
            bad = sorted({v for v in raw if not 0 <= v < num_labels})
            if bad:
                raise UsageError(
                    f"labels must be 0 to {num_labels - 1} with data.num_labels = {num_labels}, but "
                    f"the data has {bad[:5]}; set data.num_labels to {max(raw) + 1} or fix the labels"
                )
            return raw, [str(i) for i in range(num_labels)]
        names = sorted({str(v) for v in raw})
        if len(names) > num_labels:
            raise UsageError(
                f"the data has {len(names)} labels ({', '.join(names[:8])}) but data.num_labels is "
                f"{num_labels}; set data.num_labels = {len(names)}"
            )
        ids = {name: i for i, name in enumerate(names)}
        return [ids[str(v)] for v in raw], names

    def encode(self, records: list[Record], tokenizer: Any, cfg: DataConfig) -> Encoded:
        text, pair, label = self._columns(records, cfg)
        labels, names = self._labels(records, label, cfg.num_labels)
        first = [_text(r, text, i) for i, r in enumerate(records)]
        second = [_text(r, pair, i) for i, r in enumerate(records)] if pair else None
        with quiet_length_warning():
            full = tokenizer(first, second, add_special_tokens=True)["input_ids"]
            enc = tokenizer(first, second, truncation=True, max_length=cfg.max_length)
        truncated = sum(len(ids) > cfg.max_length for ids in full)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        examples = [{**{k: list(enc[k][i]) for k in keys}, "labels": labels[i]} for i in range(len(records))]
        return Encoded(examples, list(range(len(records))), truncated, label_names=names)

    def sample(self, record: Record, tokenizer: Any, cfg: DataConfig) -> None:
        return None


for _task in (InstructionTask(), CausalLMTask(), ClassificationTask()):
    TASKS.register(_task.name)(_task)
