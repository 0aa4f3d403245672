"""Everything that speaks DICOM: SCP, spool, index, study tracker, loading, encoders, outbox."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
