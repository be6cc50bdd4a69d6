"""Data: the offline MNIST set and its held-out split (:mod:`.mnist`), image files in and out
(:mod:`.images`), and folders of images as benchmark sets (:mod:`.image_sets`)."""
from .mnist import (HELDOUT_DIR, IMAGE_SIZE, DataNotFoundError, load_heldout, load_mnist,  # noqa: F401
                    split_indices)
