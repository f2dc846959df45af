"""Reading an image folder (torchvision's ImageFolder layout) into tensors: every image
decoded with PIL, converted to one or three channels, optionally resized; an unreadable
image is a one-line error naming the file."""

from __future__ import annotations

import torch

from privbench.errors import DatasetNotFoundError, ParameterError


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    # ITU-R 601-2 luma, the weights PIL's convert("L") uses.
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(1, keepdim=True)


def read_image_folder(path: str, image_size: int | None, channels: int | None):
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        folder = ImageFolder(path, loader=lambda p: p)  # paths only; decoded below
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetNotFoundError(f"Dataset 'imagefolder' at {path}: {err}") from None
    if len(folder.classes) < 2:
        raise ParameterError(
            f"Dataset 'imagefolder' at {path}: found {len(folder.classes)} class folder(s) "
            f"({', '.join(folder.classes)}); a classifier needs at least 2."
        )
    images, grayscale, sizes = [], True, {}
    for file, _ in folder.samples:
        try:
            with Image.open(file) as img:
                grayscale &= img.mode in ("L", "1", "I", "I;16", "F")
                img = img.convert("L" if img.mode in ("L", "1", "I", "I;16", "F") else "RGB")
                t = pil_to_tensor(img).float() / 255.0  # (C, H, W)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for unreadable files
            raise ParameterError(
                f"Dataset 'imagefolder' at {path}: cannot read image {file}: "
                f"{type(err).__name__}: {err}"
            ) from None
        if image_size is not None:
            from privbench.data.datasets import _resize  # the datasets' one resize

            t = _resize(t.unsqueeze(0), image_size)[0]
        sizes.setdefault(tuple(t.shape[1:]), file)
        images.append(t)
    if len(sizes) > 1:
        examples = "; ".join(f"{h}x{w} ({f})" for (h, w), f in list(sizes.items())[:3])
        raise ParameterError(
            f"Dataset 'imagefolder' at {path}: images differ in size ({examples}); pass "
            "--image-size N to resize them all to N x N."
        )
    want = channels or (1 if grayscale else 3)
    x = torch.stack([to_channels(t.unsqueeze(0), want)[0] for t in images])
    y = torch.tensor(folder.targets, dtype=torch.long)
    return x, y, list(folder.classes)
