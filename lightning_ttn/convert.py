"""Model surgery: replace every ``nn.Conv3d`` of a network by a ``TTConv3d``."""

from __future__ import annotations

from torch import nn

from lightning_ttn.layers import TTConv3d


def convert_conv3d(
    module: nn.Module, *, transform: str = "similarity", shared_transform: bool = False
) -> nn.Module:
    """Replaces every ``nn.Conv3d`` in ``module`` (recursively) by :meth:`TTConv3d.from_conv3d`.

    Follows ``nn.SyncBatchNorm.convert_sync_batchnorm``: children are replaced in place and the
    converted module is returned, which is a new object only when ``module`` itself is an
    ``nn.Conv3d``, so always use the return value. Each new layer has its conv's configuration,
    device, dtype and training mode, ``K0 = weight.mean(dim=2)`` (the temporal mean, which keeps
    the response to temporally constant input, see :meth:`TTConv3d.from_conv3d`), the conv's bias
    and identity transforms. A conv reached twice (shared weights) becomes one shared
    ``TTConv3d``. All other modules are left as they are; ``nn.Conv3d`` subclasses count as
    ``nn.Conv3d``. The parameters are new, so build the optimizer after converting.

    Args:
        module: The network (or a single ``nn.Conv3d``).
        transform: Transform of the new layers, as in ``TTConv3d``.
        shared_transform: As in ``TTConv3d``.

    Returns:
        ``module`` with its convolutions replaced (a new ``TTConv3d`` if ``module`` is a conv).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    converted: dict[int, nn.Module] = {}  # id(conv) -> its TTConv3d, so that sharing survives

    def convert(child: nn.Module) -> nn.Module:
        if isinstance(child, nn.Conv3d):
            if id(child) not in converted:
                converted[id(child)] = TTConv3d.from_conv3d(
                    child, transform=transform, shared_transform=shared_transform
                )
            return converted[id(child)]
        # _modules, not named_children(), which skips a module registered under a second name.
        for name, grandchild in list(child._modules.items()):
            if grandchild is not None:
                new = convert(grandchild)
                if new is not grandchild:
                    child.add_module(name, new)
        return child

    return convert(module)
