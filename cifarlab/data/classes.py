"""Class names, and how reports stay readable with many classes: CIFAR-100's superclasses, confusion counts
summed over them, the most-confused pairs.

Reports know a dataset only by its class names (``classes.json``, ``DataPath.classes``): 100 names equal to
CIFAR-100's fine classes, in label order, mean CIFAR-100, whichever data path or run produced them. Pure
Python: the console imports this before torch is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from cifarlab.config import CIFAR10_CLASSES, DataConfig

CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    # coarse class (CIFAR-100's coarse_label_names, in label order) -> its five fine classes
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_CLASSES: tuple[str, ...] = tuple(sorted(name for fine in CIFAR100_SUPERCLASSES.values() for name in fine))
"""The 100 fine classes in label order: the meta file's fine_label_names are in alphabetical order."""

FULL_TABLE = 20
"""Classes up to which reports show every class (tables, confusion matrices); beyond, summaries that fit a
screen: CIFAR-100's superclasses, the best and worst classes, the most-confused pairs."""

Groups = list[tuple[str, list[int]]]
"""(group name, label indices of its classes), in group order."""


def fake_classes(count: int) -> tuple[str, ...]:
    """Names for ``count`` synthetic classes: CIFAR-10's for 10, CIFAR-100's for 100 (so fake data exercises
    every CIFAR-shaped report), else class00, class01, ... (zero-padded, so they sort in label order)."""
    if count == len(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    if count == len(CIFAR100_CLASSES):
        return CIFAR100_CLASSES
    width = len(str(count - 1))
    return tuple(f"class{i:0{width}d}" for i in range(count))


def config_classes(data: DataConfig) -> tuple[str, ...]:
    """Class names as far as the config tells, for model files without their run's classes.json: the CIFAR
    sets' and fake data's own. An image folder's are its folder names, unknown here: as fake data's (with
    data.num_classes null, CIFAR-10's: the JPEG copy's)."""
    if data.name == "cifar10":
        return CIFAR10_CLASSES
    if data.name == "cifar100":
        return CIFAR100_CLASSES
    return fake_classes(data.class_count() or len(CIFAR10_CLASSES))


def superclasses(classes: Sequence[str]) -> Optional[Groups]:
    """CIFAR-100's 20 superclasses as label groups when ``classes`` are CIFAR-100's fine classes; else None."""
    if tuple(classes) != CIFAR100_CLASSES:
        return None
    index = {name: i for i, name in enumerate(classes)}
    return [(coarse, [index[name] for name in fine]) for coarse, fine in CIFAR100_SUPERCLASSES.items()]


def grouped_confusion(confusion: Sequence[Sequence[int]], groups: Groups) -> list[list[int]]:
    """The confusion counts summed over groups: [true group][predicted group]."""
    return [[sum(confusion[i][j] for i in rows for j in columns) for _, columns in groups] for _, rows in groups]


def most_confused(confusion: Sequence[Sequence[int]], count: int) -> list[tuple[int, int, int, float]]:
    """The ``count`` largest off-diagonal cells as (true, predicted, images, fraction of the true class's
    images), largest first (ties in label order)."""
    cells = [(n, i, j) for i, row in enumerate(confusion) for j, n in enumerate(row) if i != j and n > 0]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [(i, j, n, n / max(sum(confusion[i]), 1)) for n, i, j in cells[:count]]
