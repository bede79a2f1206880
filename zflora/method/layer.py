"""zFLoRA layers: wrappers that widen the residual stream of a frozen base model.

The stream carries h' = [h ; a]: d base channels and r adapter channels.

- StreamEntry wraps the token embedding:   a0 = E[x] @ P          (P: d x r, a writer)
- Reader wraps q/k/v/gate/up projections:  y = W x[:d] + B x[d:]   (B: out x r)
- Writer wraps o/down projections:         y = [W z ; A z]         (A: r x in)
- StreamNorm wraps every RMSNorm:          RMS over d + r channels, gamma and eps rescaled
- StreamExit wraps the LM head:            logits = W_h (x[:d] + M x[d:]), M = P (tied) or Q (untied)

Base weights are never copied or modified; each adapter's matrices live in per-adapter
ParameterDicts keyed by adapter name (the PEFT habit). With no adapter active the
wrappers call the base module on the unwidened stream, so the output is the base
model's, bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AdapterState:
    """Which adapter is active, shared by every zFLoRA layer of one model."""

    def __init__(self) -> None:
        self.active: str | None = None
        self.disabled = False
        self.ranks: dict[str, int] = {}

    def current(self) -> tuple[str, int] | None:
        """(name, r) of the adapter that runs now, or None for the plain base model."""
        if self.disabled or self.active is None:
            return None
        return self.active, self.ranks[self.active]


class ZFLoRALayer(nn.Module):
    """A base module plus per-adapter matrices; the base module stays frozen and shared."""

    def __init__(self, base: nn.Module, state: AdapterState, d: int) -> None:
        super().__init__()
        self.base = base
        self.d = d
        # a plain attribute, not a submodule: the state is shared, not owned
        object.__setattr__(self, "state", state)

    @property
    def weight(self) -> torch.Tensor:  # lets transformers code that inspects `.weight` keep working
        return self.base.weight

    def adapter_names(self) -> list[str]:
        return sorted({name for params in self._adapter_dicts() for name in params})

    def _adapter_dicts(self) -> list[nn.ParameterDict]:
        return [m for m in self.children() if isinstance(m, nn.ParameterDict)]

    def delete_adapter(self, name: str) -> None:
        for params in self._adapter_dicts():
            if name in params:
                del params[name]


def _new_param(
    shape: tuple[int, ...],
    like: torch.Tensor,
    dtype: torch.dtype,
    std: float,
    generator: torch.Generator | None,
) -> nn.Parameter:
    tensor = torch.zeros(shape, dtype=torch.float32)
    if std > 0:
        tensor.normal_(0.0, std, generator=generator)
    return nn.Parameter(tensor.to(device=like.device, dtype=dtype))


class StreamEntry(ZFLoRALayer):
    """Token embedding that also writes the adapter channels: [E[x] ; E[x] @ P]."""

    def __init__(self, base: nn.Embedding, state: AdapterState, d: int) -> None:
        super().__init__(base, state, d)
        self.P = nn.ParameterDict()

    def add(
        self, name: str, r: int, dtype: torch.dtype, init_scale: float, gen: torch.Generator | None
    ) -> None:
        self.P[name] = _new_param((self.d, r), self.base.weight, dtype, 0.0, gen)  # writer: zero

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.base(input_ids)
        current = self.state.current()
        if current is None:
            return embeds
        P = self.P[current[0]]
        extra = torch.matmul(embeds.to(P.dtype), P).to(embeds.dtype)
        return torch.cat([embeds, extra], dim=-1)


class StreamNorm(ZFLoRALayer):
    """RMSNorm over all d + r channels with gamma' = [gamma*sqrt(d/(d+r)) ; 1] and eps' = eps*d/(d+r).

    With the adapter channels at zero, RMS([h;0]) with eps' equals sqrt(d/(d+r)) * RMS(h)
    with eps, which the gamma rescaling undoes: a zero adapter reproduces the base model.
    """

    def __init__(self, base: nn.Module, state: AdapterState, d: int) -> None:
        super().__init__(base, state, d)
        self.eps = float(getattr(base, "variance_epsilon", getattr(base, "eps", 1e-6)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        width = hidden_states.shape[-1]
        if width == self.d:
            return self.base(hidden_states)
        input_dtype = hidden_states.dtype
        h = hidden_states.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.eps * self.d / width)
        return stream_norm_weight(self.base.weight, self.d, width - self.d, width) * h.to(input_dtype)


def stream_norm_weight(gamma: torch.Tensor, d: int, r: int, width: int) -> torch.Tensor:
    """gamma' for a stream of `width` channels of which r carry an adapter (the rest: zero padding).

    Base channels get gamma*sqrt(d/width); adapter channels sqrt((d+r)/width), which is 1
    without padding and otherwise makes the padded norm equal the unpadded one.
    """
    extra = torch.full((width - d,), math.sqrt((d + r) / width), dtype=gamma.dtype, device=gamma.device)
    return torch.cat([gamma * math.sqrt(d / width), extra])


class Reader(ZFLoRALayer):
    """A projection that reads the stream: W x[:d] + B x[d:] (W is not copied)."""

    def __init__(self, base: nn.Linear, state: AdapterState, d: int) -> None:
        super().__init__(base, state, d)
        self.B = nn.ParameterDict()

    def add(
        self, name: str, r: int, dtype: torch.dtype, init_scale: float, gen: torch.Generator | None
    ) -> None:
        self.B[name] = _new_param((self.base.out_features, r), self.base.weight, dtype, init_scale, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.d:
            return self.base(x)
        out = self.base(x[..., : self.d])
        current = self.state.current()
        if current is not None and current[0] in self.B:
            B = self.B[current[0]]
            out = out + F.linear(x[..., self.d :].to(B.dtype), B).to(out.dtype)
        return out


class Writer(ZFLoRALayer):
    """A projection that writes the stream: [W z ; A z] (zeros when this block is not adapted)."""

    def __init__(self, base: nn.Linear, state: AdapterState, d: int) -> None:
        super().__init__(base, state, d)
        self.A = nn.ParameterDict()

    def add(
        self, name: str, r: int, dtype: torch.dtype, init_scale: float, gen: torch.Generator | None
    ) -> None:
        self.A[name] = _new_param(
            (r, self.base.in_features), self.base.weight, dtype, 0.0, gen
        )  # writer: zero

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.base(z)
        current = self.state.current()
        if current is None:
            return out
        name, r = current
        if name in self.A:
            A = self.A[name]
            extra = F.linear(z.to(A.dtype), A).to(out.dtype)
        else:
            extra = out.new_zeros((*out.shape[:-1], r))
        return torch.cat([out, extra], dim=-1)


class StreamExit(ZFLoRALayer):
    """LM head reading the stream: W_h x[:d] + (W_h M) x[d:] = W_h (x[:d] + M x[d:]).

    M is the entry's P for tied embeddings (the fused head is then [E, E P], still tied)
    and a separate reader Q for untied ones (fused head [W_h, W_h Q]).
    """

    def __init__(self, base: nn.Linear, state: AdapterState, d: int, entry: StreamEntry | None) -> None:
        super().__init__(base, state, d)
        self.Q = nn.ParameterDict()
        object.__setattr__(self, "entry", entry)  # tied: read P through the entry, not a copy

    @property
    def tied(self) -> bool:
        return self.entry is not None

    def add(
        self, name: str, r: int, dtype: torch.dtype, init_scale: float, gen: torch.Generator | None
    ) -> None:
        if not self.tied:
            self.Q[name] = _new_param((self.d, r), self.base.weight, dtype, init_scale, gen)

    def projection(self, name: str) -> torch.Tensor:
        """M (d x r) of adapter `name`."""
        return self.entry.P[name] if self.tied else self.Q[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.d:
            return self.base(x)
        current = self.state.current()
        h = x[..., : self.d]
        if current is not None:
            M = self.projection(current[0])
            h = h + F.linear(x[..., self.d :].to(M.dtype), M).to(h.dtype)
        return self.base(h)
