"""Norms of the modules that train beside the LoRA pairs (a classification head, as PEFT's
``modules_to_save``): the head is one layer of a few thousand values, so the recording keeps two
numbers per parameter and step rather than its snapshots, ‖W‖ after the step and ‖ΔW‖ of the
step, as scalars named ``head/<parameter>/norm`` and ``head/<parameter>/update``.

Their names are only known at run time, so they go to ``/scalars/other`` (SWMR creates no
dataset once the file is live), and the file's root attribute ``heads`` lists the parameters."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lorascope.errors import UsageError
from lorascope.h5.format import OTHER_NAME_BYTES

__all__ = ["HeadNorms", "head_scalar"]


def head_scalar(parameter: str, column: str) -> str:
    """The scalar name of a head parameter's ``norm`` or ``update`` series."""
    return f"head/{parameter}/{column}"


class HeadNorms:
    """The Frobenius norms of the parameters of ``heads`` (module name → module) at each
    optimizer step: one stacked norm call and one host copy per step, whatever the count."""

    def __init__(self, heads: Mapping[str, nn.Module]) -> None:
        seen: set[int] = set()
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        for module_name, module in heads.items():
            for param_name, param in module.named_parameters():
                if id(param) in seen:  # a head nested in another, or a shared weight: once
                    continue
                seen.add(id(param))
                self.names.append(f"{module_name}.{param_name}" if module_name else param_name)
                self.params.append(param)
        too_long = [n for n in self.names if len(head_scalar(n, "update").encode()) > OTHER_NAME_BYTES]
        if too_long:
            raise UsageError(
                f"the head parameter name {too_long[0]!r} is too long for the recording's scalar "
                f"names ({OTHER_NAME_BYTES} bytes with its 'head/…/update' wrapping); give the "
                "Recorder's heads= a shorter module name as its key"
            )
        self._previous: list[torch.Tensor] = []

    def describe(self) -> list[dict]:
        """The file's ``heads`` attribute: each parameter's name, shape and whether it trains."""
        return [{"name": n, "shape": list(p.shape), "trainable": bool(p.requires_grad)}
                for n, p in zip(self.names, self.params)]

    def start(self) -> dict[str, float]:
        """The norms before the first update; keeps the copy the first update is measured from."""
        with torch.no_grad():
            # float32 copies: a bf16 head's update is a small difference of bf16-rounded values
            self._previous = [p.detach().float().clone() for p in self.params]
            norms = torch.stack(torch._foreach_norm(self._previous)).tolist()
        return {head_scalar(n, "norm"): v for n, v in zip(self.names, norms)}

    def step(self) -> dict[str, float]:
        """The norms after an optimizer step and of the change it made."""
        if not self._previous:
            raise UsageError("HeadNorms.step() before start(); the Recorder calls start() first")
        with torch.no_grad():
            current = [p.detach().float() for p in self.params]
            updates = torch._foreach_sub(current, self._previous)
            values = torch.stack(torch._foreach_norm(current) + torch._foreach_norm(updates)).tolist()
            torch._foreach_copy_(self._previous, current)
        n = len(self.names)
        return {**{head_scalar(name, "norm"): v for name, v in zip(self.names, values[:n])},
                **{head_scalar(name, "update"): v for name, v in zip(self.names, values[n:])}}
