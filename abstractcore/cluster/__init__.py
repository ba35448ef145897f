"""Several ``abstractcore serve`` instances behind nginx (``abstractcore cluster``)."""

from .fleet import Cluster, ClusterRecord, NginxNotFoundError, find_nginx
from .nginx_conf import POLICIES, render_nginx_conf

__all__ = [
    "POLICIES",
    "Cluster",
    "ClusterRecord",
    "NginxNotFoundError",
    "find_nginx",
    "render_nginx_conf",
]
