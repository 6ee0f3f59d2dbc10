"""Augmentation of stored images: the labels move with the image."""

import random

import pytest
import torch

from yolo_unified.data.transforms import FILL, IGNORE, random_zoom, zoom_sample

SIZE = 64


def square_sample(x0: int, y0: int, side: int) -> dict:
    """A black image with one white square, its mask (class 1 on the square) and its box, as a batch of one."""
    img = torch.zeros(1, 3, SIZE, SIZE)
    img[..., y0 : y0 + side, x0 : x0 + side] = 1.0
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    mask[:, y0 : y0 + side, x0 : x0 + side] = 1
    box = torch.tensor([[(x0 + side / 2) / SIZE, (y0 + side / 2) / SIZE, side / SIZE, side / SIZE]])
    return {"img": img, "semantic_mask": mask, "bboxes": box, "cls": torch.tensor([[0.0]]), "batch_idx": torch.zeros(1)}


def white_box(img: torch.Tensor) -> torch.Tensor:
    """The normalised xywh box around the pixels brighter than 0.5."""
    ys, xs = torch.nonzero(img[0, 0] > 0.5, as_tuple=True)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]) / SIZE


@pytest.mark.parametrize(
    "scale, shift, flip",
    [(1.0, (0.0, 0.0), True), (0.75, (0.1, -0.05), False), (1.25, (-0.1, 0.1), True), (0.5, (0.0, 0.0), False)],
)
def test_image_mask_and_box_move_together(scale, shift, flip):
    sample = square_sample(12, 20, 16)
    out = zoom_sample(sample, scale, shift, flip)
    assert out["img"].shape == sample["img"].shape and out["semantic_mask"].shape == sample["semantic_mask"].shape
    box = out["bboxes"][0]
    assert torch.allclose(white_box(out["img"]), box, atol=2 / SIZE)  # the box sits on the moved square
    on_square = out["img"][0, 0] > 0.5
    assert (out["semantic_mask"][0][on_square] == 1).float().mean() > 0.9  # and so does the mask
    assert (out["semantic_mask"][0][out["img"][0, 0] < 0.05] != 1).all()
    expected_x = 1 - 20 / SIZE if flip else 20 / SIZE  # the square's centre, 20 px from the left before the move
    assert box[0] == pytest.approx(scale * (expected_x - 0.5) + 0.5 + shift[0], abs=1e-5)
    assert box[2] == pytest.approx(scale * 16 / SIZE, abs=1e-5)


def test_zooming_out_fills_the_border_and_ignores_it_in_the_mask():
    out = zoom_sample(square_sample(24, 24, 16), 0.5, (0.0, 0.0), False)
    assert out["img"][0, :, 0, 0].tolist() == pytest.approx([FILL] * 3)
    assert int(out["semantic_mask"][0, 0, 0]) == IGNORE
    assert int(out["semantic_mask"][0, SIZE // 2 - 8, SIZE // 2 - 8]) == 0  # the image's own background stays 0


def test_a_box_moved_out_of_the_image_is_dropped_with_its_class():
    out = zoom_sample(square_sample(0, 0, 10), 1.25, (-0.1, -0.1), False)  # the corner square leaves the image
    assert out["bboxes"].shape == (0, 4) and out["cls"].shape == (0, 1) and out["batch_idx"].shape == (0,)


def test_random_zoom_is_reproducible_and_keeps_classification_labels():
    sample = {"img": torch.rand(1, 3, SIZE, SIZE), "cls": torch.tensor([2])}
    a, b = random_zoom(sample, random.Random(0)), random_zoom(sample, random.Random(0))
    assert torch.equal(a["img"], b["img"]) and int(a["cls"]) == 2
    assert not torch.equal(a["img"], sample["img"])
