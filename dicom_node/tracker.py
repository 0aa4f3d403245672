"""Study completion: a study is complete after its route's quiet period with no new instance.

Association release is only a hint (a study may come over several associations), so completion is
decided by time since the last received instance, checked by ``due_studies``.
"""

from __future__ import annotations

import logging
import time

from config import Settings
from dicom_node.index import Index

logger = logging.getLogger(__name__)


def complete_due_studies(
    settings: Settings, index: Index, now: float | None = None
) -> list[tuple[str, str | None]]:
    """Mark studies whose quiet period passed; return ``(study uid, route name or None)`` for each."""
    now = time.time() if now is None else now
    completed = []
    for study in index.due_studies(now):
        route = study["route"]
        state = "complete" if route else "unrouted"
        if index.mark_study(study["study_instance_uid"], state, study["last_received_at"]):
            if route is None:
                logger.info(
                    "study %s complete; no route matches, kept without processing",
                    study["study_instance_uid"],
                )
            else:
                logger.info("study %s complete (route '%s')", study["study_instance_uid"], route)
            completed.append((study["study_instance_uid"], route))
    return completed
