"""Administration of a node: the REST API, the configuration store shared with the CLI, C-ECHO, questions.

``AdminService`` is what ``Node.start`` runs; ``ConfigStore`` edits the YAML configuration for the API
and for ``medagent ae|destinations|routes``; ``ask_study`` answers a question for both. The HTTP app
itself is ``dicom_node.admin.app.create_app`` (imported only when the API is served).
"""

from dicom_node.admin.ask import AskResult, ask_study
from dicom_node.admin.config_store import ConfigStore, NodeIdentity, source_id
from dicom_node.admin.echo import EchoResult, echo_destination
from dicom_node.admin.errors import AdminError, EntityConflict, EntityNotFound, InvalidEntity
from dicom_node.admin.service import AdminService

__all__ = [
    "AdminError",
    "AdminService",
    "AskResult",
    "ConfigStore",
    "EchoResult",
    "EntityConflict",
    "EntityNotFound",
    "InvalidEntity",
    "NodeIdentity",
    "ask_study",
    "echo_destination",
    "source_id",
]
