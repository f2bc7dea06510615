"""cql-modules: Conservative Q-Learning (CQL, Cal-QL) as TorchRL components."""
from cql_modules.data import (
    DEFAULT_DATASET_ID,
    DatasetError,
    DatasetInfo,
    load_dataset,
    make_env,
    normalized_score,
)
from cql_modules.objectives.cql import CQLLoss
from cql_modules.objectives.discrete import DiscreteCQLLoss
from cql_modules.modules import MLP, bounded_action_spec, make_actor, make_critic
from cql_modules.export import export_policy, load_policy

__all__ = [
    "CQLLoss",
    "DiscreteCQLLoss",
    "MLP",
    "bounded_action_spec",
    "make_actor",
    "make_critic",
    "DEFAULT_DATASET_ID",
    "DatasetError",
    "DatasetInfo",
    "load_dataset",
    "make_env",
    "normalized_score",
    "export_policy",
    "load_policy",
]
__version__ = "0.1.0"
