"""Does the vision encoder see form? A linear probe of its frozen features, and per-module gradient norms.

    from nanovlm.probe import ShapeProbe
    probe = ShapeProbe(model.cfg.vision)          # 1,200 one-shape pictures, drawn once
    probe(model)                                   # {"probe_shape": 0.93, "probe_color": 1.0}

The probe draws pictures of ONE shape (nanovlm.data.shapes: any colour, size, place and rotation), runs them
through the vision encoder, pools its output tokens (mean and max over the patches) and fits a linear classifier
(softmax regression, full-batch, in torch) for the shape on two thirds of them; the score is its accuracy on the
last third. A high score means form is linearly readable from what the decoder is handed; colour is probed the
same way, as the easy reference. Training logs both every `probe_every` steps (metrics.jsonl: probe_shape,
probe_color) when that option is set.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from .config import VisionConfig
from .data.shapes import ALL_COLORS, ALL_SHAPES, check_shapes, plan_shapes, render_shapes
from .data.transforms import to_tensor

PROBE_PICTURES = 1200   # 800 to fit the probe, 400 to score it: +-2.5% standard error at 50%


def probe_pictures(cfg: VisionConfig, n: int = 1200, seed: int = 0, shapes=ALL_SHAPES, all_pairs: bool = True,
                   with_centres: bool = False):
    """n one-shape pictures as a (n, 3, S, S) tensor normalised for the encoder, with shape and colour labels
    (and, with_centres, each thing's centre (x, y) as fractions of the side). all_pairs=False leaves out the
    colour-shape pairs that `shapes` training data never shows."""
    shapes = check_shapes(shapes)
    images, shape_ids, color_ids, centres = [], [], [], []
    for index in range(n):
        rng = random.Random(f"probe/{seed}/{index}")
        picture = plan_shapes(rng, shapes, n_objects=1, heldout=all_pairs)   # every colour-shape pair?
        obj = picture["objects"][0]
        images.append(to_tensor(render_shapes(picture, cfg.image_size), cfg))
        shape_ids.append(shapes.index(obj["shape"]))
        color_ids.append(ALL_COLORS.index(obj["color"]))
        centres.append((obj["x"], obj["y"]))
    labelled = torch.stack(images), torch.tensor(shape_ids), torch.tensor(color_ids)
    return (*labelled, centres) if with_centres else labelled


@torch.no_grad()
def pooled_features(vision, images: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
    """Mean and max over the encoder's patch tokens (the CLS token left out): (N, 2 * width), in fp32."""
    was_training = vision.training
    vision.eval()
    device = next(vision.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        tokens = vision(images[start:start + batch_size].to(device)).float()
        if getattr(vision, "cls", None) is not None:
            tokens = tokens[:, 1:]
        chunks.append(torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1).cpu())
    vision.train(was_training)
    return torch.cat(chunks)


def linear_probe_accuracy(features: torch.Tensor, labels: torch.Tensor, n_classes: int, train_fraction: float = 2 / 3,
                          steps: int = 100, weight_decay: float = 1e-3) -> float:
    """Fit softmax regression on the first train_fraction of the rows (standardised features, L-BFGS); return its
    accuracy on the rest."""
    n_train = int(len(features) * train_fraction)
    x_train, x_test = features[:n_train], features[n_train:]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    weight = torch.zeros(features.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, tolerance_grad=1e-5, tolerance_change=1e-7,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, labels[:n_train]) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny matrices: on a busy machine, a thread pool spinning on them is 50x slower
    try:
        with torch.enable_grad():
            optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        return ((x_test @ weight + bias).argmax(-1) == labels[n_train:]).float().mean().item()


class ShapeProbe:
    """Shape and colour linear probes of a model's vision encoder on a fixed set of one-shape pictures."""

    def __init__(self, cfg: VisionConfig, n: int | None = None, seed: int = 0, shapes=ALL_SHAPES):
        self.shapes = check_shapes(shapes)
        self.images, self.shape_ids, self.color_ids = probe_pictures(cfg, n or PROBE_PICTURES, seed, self.shapes)

    def __call__(self, model) -> dict[str, float]:
        vision = getattr(model, "vision", model)
        features = pooled_features(vision, self.images)
        return {"probe_shape": linear_probe_accuracy(features, self.shape_ids, len(self.shapes)),
                "probe_color": linear_probe_accuracy(features, self.color_ids, len(ALL_COLORS))}


def grad_norms(model, modules=("vision", "projector", "decoder")) -> dict[str, float]:
    """L2 norm of each module's current gradient (after clipping, which scales every module alike), for
    metrics.jsonl: how much learning signal reaches the vision encoder compared with the decoder."""
    norms = {}
    for name in modules:
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        if grads:
            norms[f"grad_norm_{name}"] = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
    return norms
