"""keep_prob storage of DropBlock2d: a 0-d tensor plus its Python value, shareable by a group.

A schedule changes keep_prob every step. Eager forwards read the Python value (reading the tensor
on an accelerator would wait for it); compiled graphs read the tensor as data (a new value is no
recompilation).
"""

import numbers
from collections.abc import Iterable

import torch

__all__ = ["KeepProb", "check_keep_prob", "share_keep_prob"]


def check_keep_prob(keep_prob) -> float:
    """Return keep_prob as a float, raising ValueError unless it lies in (0, 1].

    A one-element tensor is read (a host sync where it lives on an accelerator).
    """
    if isinstance(keep_prob, torch.Tensor):
        if keep_prob.numel() != 1:
            raise ValueError(
                f"keep_prob must be a number or a one-element tensor, got shape "
                f"{tuple(keep_prob.shape)}"
            )
        keep_prob = keep_prob.item()
    if isinstance(keep_prob, bool) or not isinstance(keep_prob, numbers.Real):
        raise ValueError(f"keep_prob must be a number in (0, 1], got {keep_prob!r}")
    keep_prob = float(keep_prob)
    if not 0.0 < keep_prob <= 1.0:  # also rejects NaN
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    return keep_prob


class KeepProb:
    """One keep probability: a 0-d tensor (what compiled graphs read) and its Python value.

    The value is valid while ``tensor`` is at the in-place version it had when the value was
    stored; a write to the tensor from elsewhere (a DDP buffer broadcast) is noticed and re-read.

    Attributes:
        tensor (Tensor): the 0-d tensor, the ``_keep_prob`` buffer of every module sharing it.
        shared (bool): whether modules share it (set by :func:`share_keep_prob`).
    """

    __slots__ = ("tensor", "shared", "_value", "_version", "_moved")

    def __init__(self, tensor: torch.Tensor, value: float, shared: bool = False):
        self.tensor = tensor
        self.shared = shared
        self._value = value
        self._version = tensor._version
        self._moved = None  # (conversion, tensor before it), see DropBlock2d._apply

    def __getstate__(self):
        # The last conversion (a closure) only matters during one .to() call: never pickled.
        return {name: getattr(self, name) for name in self.__slots__ if name != "_moved"}

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)
        self._moved = None

    @property
    def value(self) -> float:
        """The keep probability as a Python float."""
        if self.tensor._version != self._version:
            self._value, self._version = float(self.tensor), self.tensor._version
        return self._value

    def fill(self, value) -> None:
        """Set the keep probability of every module holding this object.

        One in-place ``fill_`` with the value as a kernel argument: no host sync, no autograd and
        no recompilation of graphs that read the tensor.

        Args:
            value (float): the keep probability, in (0, 1].

        Raises:
            ValueError: a value outside (0, 1].
        """
        value = check_keep_prob(value)
        self.tensor.fill_(value)
        self._value, self._version = _held(value, self.tensor.dtype), self.tensor._version

    def converted(self, before: torch.Tensor, after: torch.Tensor, conversion) -> torch.Tensor:
        """The tensor a module holds once ``conversion`` (one ``.to()``) made ``after`` of ``before``.

        The first module converted moves this object to ``after``; the others of a group, whose
        ``before`` was the same tensor, get that one instead of their own copy.
        """
        if before is self.tensor:
            value = self.value
            self.tensor, self._moved = after, (conversion, before)
            self._value, self._version = _held(value, after.dtype), after._version
            return after
        if self._moved is not None and self._moved[0] is conversion and self._moved[1] is before:
            return self.tensor
        return after


def _held(value: float, dtype: torch.dtype) -> float:
    """What a tensor of ``dtype`` holds when set to ``value`` (float16 rounds), on the host."""
    if dtype in (torch.float32, torch.float64):
        return value
    return float(torch.tensor(value, dtype=dtype))


def share_keep_prob(modules: Iterable[torch.nn.Module]) -> KeepProb:
    """Tie the keep_prob of several DropBlock2d to one :class:`KeepProb` and return it.

    Afterwards ``keep_prob.fill(value)`` sets all of them at the cost of setting one. They keep
    sharing it across ``.to()``/``.cuda()``/``.half()``; setting one module's ``keep_prob``
    attribute gives that module a value of its own again.

    Args:
        modules (iterable of DropBlock2d): modules on one device with one keep_prob dtype. They
            take the first module's current keep_prob.

    Returns:
        KeepProb: the shared value.

    Raises:
        ValueError: no modules, or modules whose keep_prob lives on different devices or dtypes.
    """
    modules = list(modules)
    if not modules:
        raise ValueError("share_keep_prob needs at least one DropBlock2d")
    shared = KeepProb(modules[0].keep_prob_tensor, modules[0].keep_prob, shared=True)
    for module in modules:
        module.adopt_keep_prob(shared)
    return shared
