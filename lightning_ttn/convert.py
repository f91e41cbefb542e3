"""Model surgery: replace the ``nn.Conv3d`` of a network by ``TTConv3d``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lightning_ttn.layers import TTConv3d

KEPT_TEMPORAL_SIZE_ONE = "temporal kernel size 1: nothing to factorize"


@dataclass(frozen=True)
class Conv3dConversion:
    """What :func:`convert_conv3d` did.

    Attributes:
        module: The converted network (a new ``TTConv3d`` if a single conv was converted).
        converted: Qualified names (as in ``named_modules()``, ``""`` for the root) of the
            ``nn.Conv3d`` replaced by a ``TTConv3d``; a shared conv once, under its first name.
        kept: Qualified name -> why that ``nn.Conv3d`` was left as it is.
    """

    module: nn.Module
    converted: tuple[str, ...]
    kept: dict[str, str]

    def summary(self) -> str:
        """One line, e.g. ``"converted 60 nn.Conv3d to TTConv3d, kept 183 (temporal kernel
        size 1: nothing to factorize)"``."""
        line = f"converted {len(self.converted)} nn.Conv3d to TTConv3d"
        reasons = list(self.kept.values())
        for reason in dict.fromkeys(reasons):  # each reason once, in order of appearance
            line += f", kept {reasons.count(reason)} ({reason})"
        return line


def convert_conv3d(
    module: nn.Module, *, transform: str = "similarity", shared_transform: bool = False
) -> Conv3dConversion:
    """Replaces every ``nn.Conv3d`` with a temporal kernel size ``T > 1`` in ``module``
    (recursively) by :meth:`TTConv3d.from_conv3d`.

    Follows ``nn.SyncBatchNorm.convert_sync_batchnorm``: children are replaced in place, and the
    converted module (:attr:`Conv3dConversion.module`) is a new object only when ``module``
    itself is a converted ``nn.Conv3d``, so always use it. Each new layer has its conv's
    configuration, device, dtype and training mode, ``K0 = weight.mean(dim=2)`` (the temporal
    mean, which keeps the response to temporally constant input, see
    :meth:`TTConv3d.from_conv3d`), the conv's bias and identity transforms. A conv reached twice
    (shared weights) becomes one shared ``TTConv3d``. ``nn.Conv3d`` subclasses count as
    ``nn.Conv3d``; all other modules are left as they are. The parameters are new, so build the
    optimizer after converting.

    Convs with ``T = 1`` (1x1x1 projections, the spatial ``1 x k x k`` half of a (2+1)D block)
    are kept and listed in :attr:`Conv3dConversion.kept`: one slice has no transition to
    factorize, so a ``TTConv3d`` would be the same kernel under another parameter name (``base``
    instead of ``weight``), with the same parameter count and nothing more to learn. There is no
    option to convert them, as nothing would be gained; :meth:`TTConv3d.from_conv3d` converts
    one exactly if a model needs it.

    Args:
        module: The network (or a single ``nn.Conv3d``).
        transform: Transform of the new layers, as in ``TTConv3d``.
        shared_transform: As in ``TTConv3d``.

    Returns:
        The converted module with the names of the converted and the kept convs
        (:meth:`Conv3dConversion.summary` says it in one line).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    replacements: dict[int, nn.Module] = {}  # id(conv) -> what replaces it, so sharing survives
    converted: list[str] = []
    kept: dict[str, str] = {}

    def convert(child: nn.Module, name: str) -> nn.Module:
        if isinstance(child, nn.Conv3d):
            if id(child) not in replacements:
                if child.kernel_size[0] == 1:
                    replacements[id(child)] = child
                    kept[name] = KEPT_TEMPORAL_SIZE_ONE
                else:
                    replacements[id(child)] = TTConv3d.from_conv3d(
                        child, transform=transform, shared_transform=shared_transform
                    )
                    converted.append(name)
            return replacements[id(child)]
        # _modules, not named_children(), which skips a module registered under a second name.
        for child_name, grandchild in list(child._modules.items()):
            if grandchild is not None:
                new = convert(grandchild, f"{name}.{child_name}" if name else child_name)
                if new is not grandchild:
                    child.add_module(child_name, new)
        return child

    return Conv3dConversion(convert(module, ""), tuple(converted), kept)
