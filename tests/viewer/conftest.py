"""The real-data fixtures of the encoder tests (chest CT and its lung masks, sagittal MR and its head mask,
the whole-slide image)."""

from tests.unit.dicom_node.conftest import (  # noqa: F401  (fixtures, registered by being imported here)
    brain_mr,
    chest_ct,
    encoding_context,
    head_mask,
    lung_masks,
    whole_slide,
)
