"""intvit.cluster: accuracy runs and design-space sweeps on a Dask cluster, and searches with Optuna.

Both engines are the optional ``cluster`` extra (``pip install intvit[cluster]``); they are
imported only when ``--workers`` > 1, ``--cluster`` or ``--search`` asks for them.
"""

from intvit.cluster.engine import (CLUSTER_EXTRA, add_cluster_arguments, ClusterMap, cluster_mapper, open_client,
                                   uses_cluster)

__all__ = ["CLUSTER_EXTRA", "add_cluster_arguments", "ClusterMap", "cluster_mapper", "open_client", "uses_cluster"]
