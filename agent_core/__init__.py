"""The agent: action protocol, tool registry, planners. No network and no DICOM files here."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
