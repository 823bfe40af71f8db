"""The ``shapes`` task: procedurally generated 32x32 colour images of striped shapes among clutter."""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch

from esper_core.tasks import TaskContext, TensorClassificationTask, require_memory
from esper_core.validators import int_in_range, non_negative_int, optional, probability
from esper_vision.augment import RandomCropFlip
from esper_vision.image_task import build_image_task

TASK_NAME = "shapes"
IMAGE_SIDE = 32
CHANNELS = 3
CROP_PADDING = 4

SHAPE_NAMES = ("circle", "square", "triangle", "ring", "cross")
STRIPE_NAMES = ("horizontal", "vertical")
#: Class ``shape_index * 2 + stripe_index``: every shape in both stripe orientations.
CLASS_NAMES = tuple(f"{stripes} {shape}" for shape in SHAPE_NAMES for stripes in STRIPE_NAMES)
NUM_CLASSES = len(CLASS_NAMES)

# Geometry, in pixels. The target is always larger than any distractor.
TARGET_RADIUS = (6.5, 11.0)
DISTRACTOR_RADIUS = (3.0, 6.0)
#: The target is rotated by at most this many radians either way (distractors by any angle).
TARGET_MAX_ROTATION = math.pi
STRIPE_PERIOD = (3.0, 5.0)
#: Stripe directions are jittered by up to this many radians around horizontal / vertical.
STRIPE_JITTER = 0.3
#: Every channel of the target's main colour differs from the background's mean colour by at least this.
MIN_TARGET_CONTRAST = 0.3
#: Every channel of the target's second stripe colour differs from its main colour by exactly this.
STRIPE_CONTRAST = 0.35
LINE_LENGTH = (8.0, 28.0)
LINE_WIDTH = (0.8, 1.6)

#: The most images either split may hold (about 120 GiB of float32 images): a bound on the number, so
#: that sizes overflow nothing; whether the machine has the memory is checked when the task is built.
MAX_IMAGES = 10_000_000
#: Peak bytes per image while generating (the final float32 image is 12 KiB; masks, index maps and
#: intermediates of the batched drawing take the rest, measured ~68 KiB with 8 distractors and 8 lines).
GENERATION_BYTES_PER_IMAGE = 96 * 1024

# Seeds of the independent random streams derived from one task seed.
_TRAIN_STREAM = 0
_VAL_STREAM = 1


@attrs.frozen
class ShapesConfig:
    """Options of the ``shapes`` task.

    Each image shows one large *target* shape (circle, square, triangle, ring or cross) filled with
    horizontal or vertical stripes: ten classes. Around it: a colour-gradient background, up to
    ``distractors`` smaller solid shapes, up to ``clutter_lines`` thin line segments drawn on top,
    and Gaussian pixel noise of standard deviation ``noise``. ``seed`` fixes the data; unset, the run
    seed does.
    """

    train_size: int = attrs.field(default=4096, validator=int_in_range(NUM_CLASSES, MAX_IMAGES))
    val_size: int = attrs.field(default=1024, validator=int_in_range(NUM_CLASSES, MAX_IMAGES))
    noise: float = attrs.field(default=0.08, validator=probability())
    distractors: int = attrs.field(default=2, validator=int_in_range(0, 8))
    clutter_lines: int = attrs.field(default=1, validator=int_in_range(0, 8))
    seed: int | None = attrs.field(default=None, validator=optional(non_negative_int()))


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one named stream of ``seed`` (train and validation never share draws)."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class _Sampler:
    """Draws per-image parameters from one generator (all on the CPU, in a fixed order)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, count: int, bounds: tuple[float, float], *trailing: int) -> torch.Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(count, *trailing, generator=self.generator)

    def integers(self, count: int, high: int) -> torch.Tensor:
        return torch.randint(0, high, (count,), generator=self.generator)

    def colours(self, count: int) -> torch.Tensor:
        return torch.rand(count, CHANNELS, generator=self.generator)


def _pixel_axes() -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates as broadcastable axes: ys (1, H, 1) and xs (1, 1, W)."""
    centres = torch.arange(IMAGE_SIDE, dtype=torch.float32) + 0.5
    return centres.view(1, IMAGE_SIDE, 1), centres.view(1, 1, IMAGE_SIDE)


class _Frame:
    """Pixel offsets from per-image centres, kept separable: dy (M, H, 1), dx (M, 1, W).

    Any linear form ``a * dx + b * dy`` costs one broadcast add over (M, H, W); every shape and line
    test below is built from such forms, so no full-size coordinate grid is ever rotated.
    """

    def __init__(self, centre_y: torch.Tensor, centre_x: torch.Tensor) -> None:
        ys, xs = _pixel_axes()
        self.dy = ys - centre_y.view(-1, 1, 1)
        self.dx = xs - centre_x.view(-1, 1, 1)

    def projection(self, angle: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """(dx cos(angle) + dy sin(angle)) / scale: the coordinate along ``angle``, (M, H, W)."""
        angle, scale = angle.view(-1, 1, 1), scale.view(-1, 1, 1)
        return self.dx * (angle.cos() / scale) + self.dy * (angle.sin() / scale)

    def squared_distance(self, scale: torch.Tensor) -> torch.Tensor:
        """(dx^2 + dy^2) / scale^2, (M, H, W)."""
        inverse = scale.view(-1, 1, 1).square().reciprocal()
        return self.dx.square() * inverse + self.dy.square() * inverse


# Point-in-shape tests at unit radius, given the frame, rotation and radius of each image.


def _circle(frame: _Frame, angle: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    return frame.squared_distance(radius) <= 0.85**2


def _square(frame: _Frame, angle: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    half_side = 0.75
    inside_u = frame.projection(angle, radius).abs() <= half_side
    return inside_u & (frame.projection(angle + math.pi / 2, radius).abs() <= half_side)


def _triangle(frame: _Frame, angle: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    inradius = 0.58
    inside = frame.projection(angle, radius) <= inradius
    for corner in (1, 2):  # three half-planes with normals 120 degrees apart
        inside &= frame.projection(angle + corner * 2 * math.pi / 3, radius) <= inradius
    return inside


def _ring(frame: _Frame, angle: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    squared = frame.squared_distance(radius)
    return (squared <= 1.0) & (squared >= 0.5**2)


def _cross(frame: _Frame, angle: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    u = frame.projection(angle, radius).abs()
    v = frame.projection(angle + math.pi / 2, radius).abs()
    arm_half_width = 0.3
    return ((u <= 1.0) & (v <= arm_half_width)) | ((v <= 1.0) & (u <= arm_half_width))


#: Indexed like ``SHAPE_NAMES``.
_SHAPE_TESTS = (_circle, _square, _triangle, _ring, _cross)


@attrs.frozen
class _Placement:
    """Per-image centre (pixels), radius (pixels) and rotation (radians), each (N,)."""

    centre_y: torch.Tensor
    centre_x: torch.Tensor
    radius: torch.Tensor
    angle: torch.Tensor

    def select(self, indices: torch.Tensor) -> _Placement:
        return _Placement(*(value[indices] for value in attrs.astuple(self, recurse=False)))


def _shape_masks(kinds: torch.Tensor, placement: _Placement) -> torch.Tensor:
    """Boolean (N, H, W) masks of one shape per image; ``kinds`` -1 draws nothing in that image."""
    masks = torch.zeros(kinds.shape[0], IMAGE_SIDE, IMAGE_SIDE, dtype=torch.bool)
    for kind, inside in enumerate(_SHAPE_TESTS):  # a loop over the five kinds, not over images
        chosen = (kinds == kind).nonzero().flatten()
        if chosen.numel():
            subset = placement.select(chosen)
            frame = _Frame(subset.centre_y, subset.centre_x)
            masks[chosen] = inside(frame, subset.angle, subset.radius)
    return masks


def _random_placement(
    sampler: _Sampler, count: int, radius_bounds: tuple[float, float], margin: float, max_angle: float
) -> _Placement:
    """Random placements whose centres keep ``margin * radius`` pixels from the border, rotated by at
    most ``max_angle`` radians either way."""
    radius = sampler.uniform(count, radius_bounds)
    span = IMAGE_SIDE - 2 * margin * radius
    centre_y = margin * radius + span * sampler.uniform(count, (0.0, 1.0))
    centre_x = margin * radius + span * sampler.uniform(count, (0.0, 1.0))
    angle = sampler.uniform(count, (-max_angle, max_angle))
    return _Placement(centre_y, centre_x, radius, angle)


def _background(sampler: _Sampler, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W), mean colours (N, C)): linear gradients between two random colours."""
    start, end = sampler.colours(count), sampler.colours(count)
    direction = sampler.uniform(count, (0.0, 2 * math.pi))
    centre = torch.full((count,), IMAGE_SIDE / 2)
    ramp = (_Frame(centre, centre).projection(direction, torch.full((count,), float(IMAGE_SIDE))) + 0.5).clamp_(0.0, 1.0)
    images = torch.lerp(start.view(-1, CHANNELS, 1, 1), end.view(-1, CHANNELS, 1, 1), ramp.unsqueeze(1))
    return images, (start + end) / 2


def _stripes(sampler: _Sampler, orientation: torch.Tensor) -> torch.Tensor:
    """Boolean (N, H, W) stripes: ``orientation`` 0 horizontal, 1 vertical, jittered, random period and phase."""
    count = orientation.shape[0]
    # Horizontal stripes alternate along y (direction pi/2); vertical stripes along x (direction 0).
    direction = torch.where(orientation == 0, math.pi / 2, 0.0) + sampler.uniform(count, (-STRIPE_JITTER, STRIPE_JITTER))
    period = sampler.uniform(count, STRIPE_PERIOD)
    phase = sampler.uniform(count, (0.0, 1.0))
    origin = torch.zeros(count)
    cycles = _Frame(origin, origin).projection(direction, period) + phase.view(-1, 1, 1)
    return torch.remainder(cycles, 1.0) < 0.5


def _line_masks(sampler: _Sampler, present: torch.Tensor) -> torch.Tensor:
    """Boolean (N, H, W) masks of one random thin segment in each image where ``present`` holds."""
    count = present.shape[0]
    start_y = sampler.uniform(count, (0.0, IMAGE_SIDE))
    start_x = sampler.uniform(count, (0.0, IMAGE_SIDE))
    angle = sampler.uniform(count, (0.0, 2 * math.pi))
    length = sampler.uniform(count, LINE_LENGTH)
    half_width = sampler.uniform(count, LINE_WIDTH) / 2
    chosen = present.nonzero().flatten()
    masks = torch.zeros(count, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.bool)
    frame = _Frame(start_y[chosen], start_x[chosen])
    unit = torch.ones(chosen.shape[0])
    along = frame.projection(angle[chosen], unit)
    across = frame.projection(angle[chosen] + math.pi / 2, unit).abs_()
    length, half_width = length[chosen].view(-1, 1, 1), half_width[chosen].view(-1, 1, 1)
    masks[chosen] = (along >= 0) & (along <= length) & (across <= half_width)
    return masks


def generate_shapes(
    count: int,
    generator: torch.Generator,
    *,
    noise: float,
    distractors: int,
    clutter_lines: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 images (count, 3, 32, 32) in [0, 1], int64 labels (count,)) drawn from a CPU ``generator``.

    Classes are balanced to within one image. Every step is a batched tensor op over all images.
    Objects are painted as layer ids into one (N, H, W) map, later layers on top; colours are looked
    up once at the end: 0 is the background, then the distractors, the target's two stripe colours
    and the clutter lines.
    """
    sampler = _Sampler(generator)
    labels = (torch.arange(count) % NUM_CLASSES)[torch.randperm(count, generator=generator)]
    background, background_colour = _background(sampler, count)
    layers = torch.zeros(count, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8)
    palette = [torch.zeros(count, CHANNELS)]  # layer 0 takes the background instead

    for _ in range(distractors):  # solid, smaller shapes; each image shows a random number of them
        present = sampler.uniform(count, (0.0, 1.0)) < 0.5
        kinds = torch.where(present, sampler.integers(count, len(SHAPE_NAMES)), -1)
        masks = _shape_masks(kinds, _random_placement(sampler, count, DISTRACTOR_RADIUS, 0.5, math.pi))
        layers.masked_fill_(masks, len(palette))
        palette.append(sampler.colours(count))

    shape_kinds, stripe_orientation = labels // len(STRIPE_NAMES), labels % len(STRIPE_NAMES)
    target = _shape_masks(shape_kinds, _random_placement(sampler, count, TARGET_RADIUS, 0.8, TARGET_MAX_ROTATION))
    stripes = _stripes(sampler, stripe_orientation)
    offset = sampler.uniform(count, (MIN_TARGET_CONTRAST, 1.0 - MIN_TARGET_CONTRAST), CHANNELS)
    main_colour = torch.remainder(background_colour + offset, 1.0)
    stripe_colour = torch.where(main_colour < 0.5, main_colour + STRIPE_CONTRAST, main_colour - STRIPE_CONTRAST)
    layers.masked_fill_(target & stripes, len(palette))
    layers.masked_fill_(target & ~stripes, len(palette) + 1)
    palette += [main_colour, stripe_colour]

    for _ in range(clutter_lines):  # thin segments drawn over everything, the target included
        present = sampler.uniform(count, (0.0, 1.0)) < 0.5
        layers.masked_fill_(_line_masks(sampler, present), len(palette))
        palette.append(sampler.colours(count))

    colours = torch.stack(palette, dim=2)  # (N, C, layers)
    layer_index = layers.view(count, 1, -1).long().expand(count, CHANNELS, -1)
    painted = colours.gather(2, layer_index).view(count, CHANNELS, IMAGE_SIDE, IMAGE_SIDE)
    images = torch.where(layers.unsqueeze(1) == 0, background, painted)
    if noise > 0:
        images.add_(torch.randn(images.shape, generator=generator), alpha=noise)
    return images.clamp_(0.0, 1.0), labels


def build_shapes(config: ShapesConfig, context: TaskContext) -> TensorClassificationTask:
    """The ``shapes`` task on ``context.device``, generated on the CPU from ``config.seed`` or the run seed."""
    total = config.train_size + config.val_size
    sizes = f"[task] train_size = {config.train_size}, val_size = {config.val_size} ({total} images)"
    require_memory(total * GENERATION_BYTES_PER_IMAGE, torch.device("cpu"), what=sizes)
    if context.device.type != "cpu":
        require_memory(total * CHANNELS * IMAGE_SIDE * IMAGE_SIDE * 4, context.device, what=sizes)
    seed = context.seed if config.seed is None else config.seed
    options = {"noise": config.noise, "distractors": config.distractors, "clutter_lines": config.clutter_lines}
    train_images, train_labels = generate_shapes(config.train_size, stream_generator(seed, _TRAIN_STREAM), **options)
    val_images, val_labels = generate_shapes(config.val_size, stream_generator(seed, _VAL_STREAM), **options)
    return build_image_task(
        name=TASK_NAME,
        train_images=train_images,
        train_labels=train_labels,
        val_images=val_images,
        val_labels=val_labels,
        num_classes=NUM_CLASSES,
        device=context.device,
        augmentation=lambda border: RandomCropFlip(CROP_PADDING, border),
    )
