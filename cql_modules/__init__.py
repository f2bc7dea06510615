"""cql-modules: Conservative Q-Learning (CQL, Cal-QL) as TorchRL components."""
from cql_modules.loss import CQLLoss
from cql_modules.networks import MLP, bounded_action_spec, make_actor, make_critic

__all__ = ["CQLLoss", "MLP", "bounded_action_spec", "make_actor", "make_critic"]
__version__ = "0.1.0"
