"""The key/value cache of every attention kind, behind one interface (SPEC "Cache interface").

``GPTModel.new_kv_cache(batch_size, max_len)`` returns a ``KVCache``: one entry per block, each the
state that block's attention keeps between tokens, allocated once:

- ``FullKV``: keys and values of every position, (b, n_kv_heads, max_len, head_dim) each — GQA
  keeps only its key/value heads;
- ``RingKV``: a sliding layer's last ``window`` keys and values in a ring buffer (slot
  ``position % window``), (b, n_kv_heads, window, head_dim): memory flat however long the generation;
- ``LatentKV``: MLA's latent, (b, max_len, latent_dim), from which keys and values are recomputed;
- ``DeltaState``: a Gated DeltaNet layer's state, (b, n_heads, head_dim, head_dim), zeros at first.

``KVCache.pos`` counts the tokens consumed; ``KVCache.nbytes`` is the bytes of every tensor
allocated (it works on the meta device, for estimates).
"""

from __future__ import annotations

import torch


class FullKV:
    """Keys and values of positions ``0 .. max_len - 1``, filled left to right."""

    def __init__(
        self, batch_size: int, heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (batch_size, heads, max_len, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.k, self.v)

    def update(
        self, k: torch.Tensor, v: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store ``k`` / ``v`` (b, heads, t, head_dim) at ``start``; return every key and value so far
        (positions ``0 .. start + t - 1`` in order, hence no position tensor: None)."""
        t = k.shape[2]
        # narrow + copy_ rather than slice assignment: the same copy without Python's indexing machinery,
        # which costs more than the copy itself for one token of a small model.
        self.k.narrow(2, start, t).copy_(k)
        self.v.narrow(2, start, t).copy_(v)
        return self.k.narrow(2, 0, start + t), self.v.narrow(2, 0, start + t), None


class RingKV(FullKV):
    """The last ``window`` keys and values; position ``p`` lives in slot ``p % window``."""

    def __init__(
        self, batch_size: int, heads: int, window: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__(batch_size, heads, window, head_dim, dtype, device)
        self.window = window

    def update(
        self, k: torch.Tensor, v: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store the new positions and return the keys/values the new queries may need.

        One new token: it overwrites the position that just left its window, and the filled slots
        are exactly its window (positions None: every key is visible). Several: the buffer's filled
        entries followed by the new ones, with the position each holds, for the caller's mask; then
        the last ``window`` new positions are written.
        """
        w, t = self.window, k.shape[2]
        if t == 1:
            self.k.narrow(2, start % w, 1).copy_(k)
            self.v.narrow(2, start % w, 1).copy_(v)
            n = min(start + 1, w)
            return self.k.narrow(2, 0, n), self.v.narrow(2, 0, n), None
        filled = min(start, w)  # slots 0 .. filled - 1 hold positions (the others were never written)
        slots = torch.arange(filled, device=k.device)
        held = start - 1 - torch.remainder(start - 1 - slots, w)  # the position each filled slot holds
        positions = torch.cat((held, torch.arange(start, start + t, device=k.device)))
        k_all = torch.cat((self.k[:, :, :filled], k), dim=2)
        v_all = torch.cat((self.v[:, :, :filled], v), dim=2)
        keep = min(t, w)
        written = torch.arange(start + t - keep, start + t, device=k.device) % w
        self.k[:, :, written] = k[:, :, t - keep :]
        self.v[:, :, written] = v[:, :, t - keep :]
        return k_all, v_all, positions


class LatentKV:
    """MLA's cached latent of positions ``0 .. max_len - 1``: (b, max_len, latent_dim)."""

    def __init__(
        self, batch_size: int, max_len: int, latent_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.latent = torch.empty(batch_size, max_len, latent_dim, dtype=dtype, device=device)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.latent,)

    def update(self, c: torch.Tensor, start: int) -> torch.Tensor:
        """Store ``c`` (b, t, latent_dim) at ``start``; return the latent of positions ``0 .. start + t - 1``."""
        t = c.shape[1]
        self.latent.narrow(1, start, t).copy_(c)
        return self.latent.narrow(1, 0, start + t)


class DeltaState:
    """A Gated DeltaNet layer's recurrent state, (b, n_heads, head_dim_k, head_dim_v), zeros at first."""

    def __init__(self, batch_size: int, heads: int, dk: int, dv: int, dtype: torch.dtype, device: torch.device) -> None:
        # float32 whatever the weights: the state sums many small updates.
        self.state = torch.zeros(batch_size, heads, dk, dv, dtype=torch.float32, device=device)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.state,)


LayerCache = FullKV | RingKV | LatentKV | DeltaState


class KVCache:
    """One generation's state: ``layers[i]`` is block ``i``'s; ``pos`` tokens consumed of at most ``max_len``."""

    def __init__(self, layers: list[LayerCache], max_len: int) -> None:
        self.layers = layers
        self.max_len = max_len
        self.pos = 0

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the cache allocated (the KV-cache figure of an estimate)."""
        return sum(t.nbytes for layer in self.layers for t in layer.tensors())
