"""The TensorDict keys of every transition the data layer produces (defined once, here).

A sampled batch is a ``TensorDict`` with ``batch_size=[B]`` holding::

    observation                [B, obs_dim]  float32
    action                     [B, act_dim]  float32 (a Discrete action space: [B] int64, TorchRL's Categorical)
    ("next", "observation")    [B, obs_dim]  float32
    ("next", "reward")         [B, 1]        float32
    ("next", "done")           [B, 1]        bool    terminated | truncated (episode end)
    ("next", "terminated")     [B, 1]        bool    true termination (no bootstrap)
    ("next", "truncated")      [B, 1]        bool    episode cut without termination
    mc_return                  [B, 1]        float32 discounted return-to-go (Cal-QL)

These are TorchRL's standard names, so a batch from the offline buffer and a batch from a
``Collector`` look alike.
"""

OBSERVATION = "observation"
ACTION = "action"
NEXT_OBSERVATION = ("next", "observation")
REWARD = ("next", "reward")
DONE = ("next", "done")
TERMINATED = ("next", "terminated")
TRUNCATED = ("next", "truncated")
MC_RETURN = "mc_return"

TRANSITION_KEYS = (OBSERVATION, ACTION, NEXT_OBSERVATION, REWARD, DONE, TERMINATED, TRUNCATED, MC_RETURN)
